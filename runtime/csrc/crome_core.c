/* crome_core: placeholder until the C core lands. */
#include "crome_core.h"
int crome_abi_version(void) { return 1; }
