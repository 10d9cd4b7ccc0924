/* cublas_v2.h — see cuda_runtime.h beside this file */
#include "cuda_runtime.h"
