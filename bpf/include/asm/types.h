/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The BPF target has no multiarch include directory; the kernel's UAPI
 * headers only need the generic integer types from here. */
#include <asm-generic/types.h>
