/* Classifies one bag of cell images: minimal ENCODER MIL IMAGE... */
#include <stdio.h>

#include "amlmil.h"

int main(int argc, char **argv) {
  amlmil_session *session = NULL;
  amlmil_bag *bag = NULL;
  amlmil_result *result = NULL;
  amlmil_status st;
  size_t predicted = 0;
  int i, rc = 1;

  if (argc < 4) {
    fprintf(stderr, "usage: %s ENCODER MIL IMAGE...\n", argv[0]);
    return 2;
  }
  st = amlmil_session_new(argv[1], argv[2], NULL, &session);
  if (st == AMLMIL_STATUS_OK) st = amlmil_bag_new(&bag);
  for (i = 3; i < argc && st == AMLMIL_STATUS_OK; i++)
    st = amlmil_bag_add_file(bag, (uint64_t)(i - 3), argv[i]);
  if (st == AMLMIL_STATUS_OK) st = amlmil_session_classify(session, bag, NULL, NULL, &result);
  if (st == AMLMIL_STATUS_OK) st = amlmil_result_predicted_class(result, &predicted);
  if (st == AMLMIL_STATUS_OK) {
    printf("predicted: %s\n", amlmil_result_class_name(result, predicted));
    rc = 0;
  } else {
    fprintf(stderr, "%s: %s\n", amlmil_status_name(st), amlmil_last_error());
  }
  amlmil_result_free(result);
  amlmil_bag_free(bag);
  amlmil_session_free(session);
  return rc;
}
