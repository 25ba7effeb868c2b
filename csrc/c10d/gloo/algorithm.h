// See README.md: names ProcessGroupGloo.hpp mentions, nothing more.
#pragma once
