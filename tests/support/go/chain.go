// A two-tier Go service for tests/kernel/test_trace_go.py, standard library
// only. `chain front PORT BACKPORT`: GET /req/<k> is handled by net/http's
// connection goroutine, which hands the work to a new goroutine; that one
// calls http://127.0.0.1:BACKPORT/back/<k> with net/http's client (whose
// transport writes the request from its writeLoop goroutine) and the
// handler answers with the body it got. `chain back PORT`: GET /back/<k>
// answers "ok <k>". Each side prints one line per request with the
// goroutine ids (parsed from runtime.Stack) the test compares with the
// spans' tid_usr:
//   front <k> handler=<goid> worker=<goid>
//   back <k> handler=<goid>
package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

func goid() uint64 {
	var buf [64]byte
	n := runtime.Stack(buf[:], false)
	f := bytes.Fields(buf[:n]) // "goroutine 18 [running]:"
	id, _ := strconv.ParseUint(string(f[1]), 10, 64)
	return id
}

var out sync.Mutex

func say(format string, a ...interface{}) {
	out.Lock()
	defer out.Unlock()
	fmt.Printf(format+"\n", a...)
}

func main() {
	mode, port := os.Args[1], os.Args[2]
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	switch mode {
	case "front":
		back := os.Args[3]
		http.HandleFunc("/req/", func(w http.ResponseWriter, req *http.Request) {
			k := strings.TrimPrefix(req.URL.Path, "/req/")
			handler := goid()
			done := make(chan string)
			go func() {
				worker := goid()
				time.Sleep(time.Millisecond) // parked: resumed on whichever thread is free
				resp, err := client.Get("http://127.0.0.1:" + back + "/back/" + k)
				body := "error"
				if err == nil {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					body = string(b)
				}
				say("front %s handler=%d worker=%d", k, handler, worker)
				done <- body
			}()
			w.Write([]byte(<-done))
		})
	case "back":
		http.HandleFunc("/back/", func(w http.ResponseWriter, req *http.Request) {
			k := strings.TrimPrefix(req.URL.Path, "/back/")
			say("back %s handler=%d", k, goid())
			w.Write([]byte("ok " + k))
		})
	}
	l, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		panic(err)
	}
	say("ready")
	http.Serve(l, nil)
}
