/* Open MPI's C API for the `lora` command (Sources/LoraCLI/MPI.swift).
 * MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM and MPI_IN_PLACE are macros over
 * Open MPI's globals that Swift cannot import: these inline functions hand
 * them over. Only the command links libmpi; liblora.so never does. */
#ifndef LORA_CMPI_SHIM_H
#define LORA_CMPI_SHIM_H
#include <mpi.h>

static inline MPI_Comm cmpi_comm_world(void) {
    return MPI_COMM_WORLD;
}
static inline int cmpi_thread_funneled(void) {
    return MPI_THREAD_FUNNELED;
}
static inline int cmpi_success(void) {
    return MPI_SUCCESS;
}

/* In place: every element becomes its sum over all ranks. */
static inline int cmpi_allreduce_sum_float(float *buffer, int count) {
    return MPI_Allreduce(MPI_IN_PLACE, buffer, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
}
/* Errors come back as return codes (the default aborts the whole job without a message of ours). */
static inline int cmpi_errors_return(void) {
    return MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
}
static inline int cmpi_error_string(int code, char *out, int *len) {
    return MPI_Error_string(code, out, len);
}
static inline int cmpi_max_error_string(void) {
    return MPI_MAX_ERROR_STRING;
}
static inline int cmpi_abort(int code) {
    return MPI_Abort(MPI_COMM_WORLD, code);
}
#endif
