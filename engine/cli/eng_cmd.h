/* eng_cmd.h — subcommands of build/tollgate-engine.  Each takes the
 * arguments after its name and returns the process exit status. */
#ifndef ENG_CMD_H
#define ENG_CMD_H

int eng_cmd_serve(int argc, char **argv);      /* eng_server.c */
int eng_cmd_tokenize(int argc, char **argv);   /* eng_tools.c */
int eng_cmd_detokenize(int argc, char **argv); /* eng_tools.c */
int eng_cmd_logits(int argc, char **argv);     /* eng_logits.c */
int eng_cmd_gen_model(int argc, char **argv);  /* eng_genmodel.c */

#endif
