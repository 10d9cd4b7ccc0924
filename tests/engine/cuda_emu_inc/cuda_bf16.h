/* cuda_bf16.h — see cuda_runtime.h beside this file */
#include "cuda_runtime.h"
