/* Minimal CPython extension wrapper so setuptools builds edgerun._native as an ordinary
 * extension; the kernels themselves are plain C functions loaded with ctypes. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static struct PyModuleDef er_native_module = {PyModuleDef_HEAD_INIT, "_native",
                                              "edgerun native CPU kernels (use via ctypes)", -1, NULL};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&er_native_module); }
