/* Just enough of glibc's argp.h for elfutils' lib/ to compile against musl: libelf, the only
 * part of elfutils libbpf needs, never calls argp. The functions are declared, not defined. */
#ifndef SIDECARLESS_ARGP_SHIM_H
#define SIDECARLESS_ARGP_SHIM_H
#include <stdio.h>
typedef int error_t;
struct argp_option { const char *name; int key; const char *arg; int flags; const char *doc; int group; };
struct argp_state;
typedef error_t (*argp_parser_t)(int key, char *arg, struct argp_state *state);
struct argp_child;
struct argp {
  const struct argp_option *options; argp_parser_t parser; const char *args_doc; const char *doc;
  const struct argp_child *children; char *(*help_filter)(int key, const char *text, void *input);
  const char *argp_domain;
};
struct argp_state {
  const struct argp *root_argp; int argc; char **argv; int next; unsigned flags; unsigned arg_num;
  int quoted; void *input; void **child_inputs; void *hook; char *name; FILE *err_stream;
  FILE *out_stream; void *pstate;
};
#define OPTION_ARG_OPTIONAL 0x1
#define ARGP_ERR_UNKNOWN 7 /* E2BIG, as glibc */
#define ARGP_KEY_ARG 0
#define ARGP_KEY_INIT 0x1000003
#define ARGP_HELP_SEE 0x10
void argp_help(const struct argp *argp, FILE *stream, unsigned flags, char *name);
error_t argp_parse(const struct argp *argp, int argc, char **argv, unsigned flags, int *arg_index, void *input);
#endif
