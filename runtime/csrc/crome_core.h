#ifndef CROME_CORE_H
#define CROME_CORE_H
__attribute__((visibility("default"))) int crome_abi_version(void);
#endif
