// Handing freed heap memory back to the system.
#include "lora_support.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

void lb_release_free_heap(void) {
#if defined(__GLIBC__)
    // glibc keeps freed blocks resident for reuse; malloc_trim returns the
    // whole free pages among them (not only the top of the heap) to the kernel.
    malloc_trim(0);
#endif
}
