/* check.h: the CHECK macro the C tests share: a failed check prints where
 * and what, counts in `failures`, and the test goes on (main returns
 * non-zero when failures > 0). Include it once, in the test's .c file. */
#ifndef OFLUA_SPEC_CHECK_H
#define OFLUA_SPEC_CHECK_H

#include <stdio.h>

static int failures = 0;
#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                              \
    }                                                                          \
  } while (0)

#endif
