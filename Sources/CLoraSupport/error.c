#include "lora_support.h"
#include <string.h>

static _Thread_local char last_error[4096];

void lb_set_error(const char *message) {
    if (!message) {
        last_error[0] = 0;
        return;
    }
    size_t n = strlen(message);
    if (n >= sizeof last_error) {
        n = sizeof last_error - 1;
        // Do not cut a UTF-8 sequence in two.
        while (n > 0 && ((unsigned char)message[n] & 0xC0) == 0x80) n--;
    }
    memcpy(last_error, message, n);
    last_error[n] = 0;
}

const char *lb_get_error(void) {
    return last_error;
}
