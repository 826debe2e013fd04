/*
 * edgerun native kernels: the public contract with the Python binding (edgerun/backends/native*).
 *
 * ER_ABI_VERSION changes whenever an exported signature or er_layer_t changes; the binding refuses a
 * library whose er_abi_version() differs from the number it was written for.  Every entry point that
 * can fail returns an er_status; er_status_str() names it for error messages.
 */
#ifndef EDGERUN_H
#define EDGERUN_H

#define ER_ABI_VERSION 1

typedef enum {
    ER_OK = 0,
    ER_E_UNSUPPORTED = -1, /* quant type or operation this build has no kernel for */
    ER_E_NOMEM = -2,       /* an allocation failed */
    ER_E_SHAPE = -3,       /* a size is not a multiple of the type's block, or shapes disagree */
    ER_E_INVALID = -4,     /* a null pointer, negative size or out-of-range argument */
} er_status;

int er_abi_version(void);
const char *er_status_str(int status);

#endif
