/*
 * replay_main.c: runs fuzz inputs through fuzz_lua.c without libFuzzer, so
 * the seed corpora and every saved finding are replayed by the normal (and
 * the sanitizer) test build.
 *
 *   fuzz_replay TARGET PATH...    PATH: a file or a directory of files
 *
 * Exit status 0 when every input ran; a failing input aborts (the harness
 * prints the Lua error and the input's path is the last one named on stderr
 * with OFLUA_FUZZ_VERBOSE=1).
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int verbose;
static long inputs;

static int run_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    fprintf(stderr, "fuzz_replay: cannot open %s\n", path);
    return -1;
  }
  size_t cap = 4096, len = 0;
  uint8_t *buf = malloc(cap);
  for (;;) {
    if (buf == NULL) {
      fclose(f);
      fprintf(stderr, "fuzz_replay: out of memory\n");
      return -1;
    }
    len += fread(buf + len, 1, cap - len, f);
    if (len < cap) break;
    cap *= 2;
    uint8_t *nb = realloc(buf, cap);
    if (nb == NULL) free(buf);
    buf = nb;
  }
  int bad = ferror(f);
  fclose(f);
  if (bad) {
    free(buf);
    fprintf(stderr, "fuzz_replay: cannot read %s\n", path);
    return -1;
  }
  if (verbose) fprintf(stderr, "fuzz_replay: %s (%zu bytes)\n", path, len);
  LLVMFuzzerTestOneInput(buf, len);
  free(buf);
  inputs++;
  return 0;
}

static int cmp(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int run_path(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0) {
    fprintf(stderr, "fuzz_replay: no such file or directory: %s\n", path);
    return -1;
  }
  if (!S_ISDIR(st.st_mode)) return run_file(path);
  DIR *d = opendir(path);
  if (d == NULL) return -1;
  char **names = NULL;
  size_t n = 0, cap = 0;
  struct dirent *e;
  int rc = 0;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 64;
      char **nn = realloc(names, cap * sizeof *names);
      if (nn == NULL) {
        rc = -1;
        break;
      }
      names = nn;
    }
    size_t len = strlen(path) + strlen(e->d_name) + 2;
    names[n] = malloc(len);
    if (names[n] == NULL) {
      rc = -1;
      break;
    }
    snprintf(names[n], len, "%s/%s", path, e->d_name);
    n++;
  }
  closedir(d);
  if (n > 0) qsort(names, n, sizeof *names, cmp); /* a stable order */
  for (size_t i = 0; i < n; i++) {
    if (rc == 0) rc = run_path(names[i]);
    free(names[i]);
  }
  free(names);
  return rc;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: fuzz_replay TARGET PATH...\n");
    return 2;
  }
  verbose = getenv("OFLUA_FUZZ_VERBOSE") != NULL;
  if (setenv("OFLUA_FUZZ_TARGET", argv[1], 1) != 0) return 2;
  LLVMFuzzerInitialize(&argc, &argv);
  for (int i = 2; i < argc; i++)
    if (run_path(argv[i]) != 0) return 1;
  printf("fuzz_replay %s: %ld inputs ok\n", argv[1], inputs);
  return 0;
}
