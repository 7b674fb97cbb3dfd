# Declarations of bpf/include/bash.h (the one definition of the record).
cdef extern from "include/bash.h" nogil:
    enum:
        BASH_LINE_MAX
        BASH_LEN_CHUNK
        BASH_LEN_CHUNKS
        BASH_F_TRUNCATED
        BASH_F_LEN_AT_LEAST
        BASH_DROP_RING
        BASH_DROP_READ
        BASH_DROP_MAX

    cdef struct bash_line:
        unsigned long long ts
        unsigned int pid
        unsigned int uid
        unsigned int line_len
        unsigned short captured
        unsigned char flags
        char line[481]
