# Declarations of bpf/include/trace_go.h (the one definition of the Go
# goroutine records of ebpf-trace).
cdef extern from "include/trace_go.h" nogil:
    enum:
        GO_EV_SWITCH
        GO_EV_NEWPROC
        GO_EV_ROUNDTRIP
        GO_EV_WRITELOOP
        GO_DROP_RING
        GO_DROP_READ
        GO_DROP_MAPS
        GO_DROP_MAX

    cdef struct go_proc:
        unsigned int goid_off

    cdef struct go_event:
        unsigned long long ts_ns
        unsigned long long goid
        unsigned long long arg
        unsigned int pid
        unsigned int tid
        unsigned char kind
