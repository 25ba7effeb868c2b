#!/bin/sh
# Doxygen INPUT_FILTER for include/amlmil.h: the generated header's prose writes
# placeholders as <stage>, <label>, <output>, which Doxygen would take for
# (unsupported) HTML tags. Outside `code spans` and "quoted strings" (which
# Doxygen prints verbatim) every <word> that is not an HTML tag becomes
# &lt;word&gt;.
exec awk '
BEGIN {
  n = split("a b i u s p br hr em tt ul ol li dl dt dd th tr td sub sup pre div img del ins kbd var code span small table strong center caption blockquote h1 h2 h3 h4 h5 h6", t, " ")
  for (j = 1; j <= n; j++) html[t[j]] = 1
}
function escape(seg,    fixed, word) {
  fixed = ""
  while (match(seg, /<[A-Za-z_][A-Za-z0-9_]*>/)) {
    word = substr(seg, RSTART + 1, RLENGTH - 2)
    fixed = fixed substr(seg, 1, RSTART - 1) ((tolower(word) in html) ? substr(seg, RSTART, RLENGTH) : "&lt;" word "&gt;")
    seg = substr(seg, RSTART + RLENGTH)
  }
  return fixed seg
}
{
  out = ""; rest = $0; open = ""
  while (rest != "") {
    if (open == "") {
      if (match(rest, /[`"]/)) {
        at = RSTART  # escape() calls match() too
        open = substr(rest, at, 1)
        out = out escape(substr(rest, 1, at - 1)) open
        rest = substr(rest, at + 1)
      } else { out = out escape(rest); rest = "" }
    } else {
      k = index(rest, open)
      if (k) { out = out substr(rest, 1, k); rest = substr(rest, k + 1); open = "" }
      else { out = out rest; rest = "" }
    }
  }
  print out
}' "$1"
