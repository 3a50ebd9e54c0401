// Command load is the benchmark's closed-loop load generator: each of -c
// workers sends one message, waits for its final reply, and sends the next,
// for a warm-up and then a measured window bounded by -d and -n.
//
// Modes:
//
//	ws          WebSocket; -frames dialog: Dialog Gateway's /ws JSON protocol
//	            (subprotocol dialog.v1.json, a bearer token per socket, a user
//	            message, then its ack, deltas and final reply); -frames echo:
//	            the Go gateway's {"id","text"} -> {"result":{...}} frames
//	converse    dialog.backend.v1.Backend/Converse straight to a back-end
//	            (mutual TLS, x-dialog-user), one stream per worker
//	gw-converse dialog.v1.Gateway/Converse, one stream per worker
//	gw-send     dialog.v1.Gateway/Send, one call per message
//	unary, bidi any method (-path) whose server echoes each request message
//	            back (the transparent proxy path); bidi keeps one stream per worker
//	idle        opens -c WebSockets and holds them (-hold), to read the
//	            gateway's memory per connection; prints a line when they are open
//	sse         -c subscribers of one user's GET /events/stream (-base), then
//	            -messages POST /messages of that user: the fan-out of each reply
//
// It prints one JSON line: counts, rate, latency percentiles, its own CPU in
// the measured window, and the CPU seconds of the -pids processes in it.
package main

import (
	"flag"
	"fmt"
	"io/ioutil"
	"log"
	"math"
	"net"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	maxDuration    = 120 * time.Second
	maxConcurrency = 1000
	maxConnections = 10000 // idle and sse modes
	maxMessages    = 1000  // sse mode
	shotTimeout    = 10 * time.Second
)

// A worker sends one message per shot and returns when its final reply came, with the
// time from the back-end's first delta to its arrival here (seconds; -1 when the reply
// carried no send time, see wire.SentLabel).
type worker interface {
	shot(id string) (ttft float64, err error)
	close()
}

// sinceSent is the time from the Unix-nanosecond stamp sentNs to now, or -1.
func sinceSent(sentNs string) float64 {
	ns, err := strconv.ParseInt(sentNs, 10, 64)
	if err != nil {
		return -1
	}
	return float64(time.Now().UnixNano()-ns) / 1e9
}

type options struct {
	mode, url, frames, target, serverName, caFile, certFile, keyFile, path, user, text string
	plaintext                                                                          bool
	tokens                                                                             []string
}

func loopback(hostport string) {
	h, _, err := net.SplitHostPort(hostport)
	if err != nil || (h != "127.0.0.1" && h != "localhost" && h != "::1") {
		log.Fatalf("refusing a non-loopback target %q", hostport)
	}
}

func readTokens(path string) []string {
	if path == "" {
		return nil
	}
	b, err := ioutil.ReadFile(path)
	if err != nil {
		log.Fatalf("tokens: %v", err)
	}
	return strings.Fields(string(b))
}

func (o *options) token(i int) string {
	if len(o.tokens) == 0 {
		return ""
	}
	return o.tokens[i%len(o.tokens)]
}

func procCPU(pid int) (float64, bool) {
	b, err := ioutil.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndex(s, ")")+1:])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100.0, true // USER_HZ is 100 on Linux
}

func cpuOf(pids map[string][]int) map[string]float64 {
	out := map[string]float64{}
	for name, list := range pids {
		for _, pid := range list {
			if v, ok := procCPU(pid); ok {
				out[name] += v
			}
		}
	}
	return out
}

func selfCPU() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// parsePids reads name:pid,name:pid,...; the CPU of one name's pids is summed.
func parsePids(s string) map[string][]int {
	out := map[string][]int{}
	for _, item := range strings.Split(s, ",") {
		parts := strings.SplitN(item, ":", 2)
		if len(parts) != 2 {
			continue
		}
		if pid, err := strconv.Atoi(parts[1]); err == nil {
			out[parts[0]] = append(out[parts[0]], pid)
		}
	}
	return out
}

func pct(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	k := int(math.Ceil(p*float64(len(sorted)))) - 1
	if k < 0 {
		k = 0
	}
	return sorted[k]
}

func open(o *options, i int) (worker, error) {
	switch o.mode {
	case "ws":
		return dialWS(o, i)
	case "converse", "gw-converse", "gw-send", "unary", "bidi":
		return newGRPCWorker(o, i)
	}
	return nil, fmt.Errorf("unknown mode %q", o.mode)
}

func main() {
	var o options
	flag.StringVar(&o.mode, "mode", "ws", "ws | converse | gw-converse | gw-send | unary | bidi")
	conc := flag.Int("c", 1, "concurrent workers (sockets or streams)")
	dur := flag.Duration("d", 5*time.Second, "measured duration")
	warm := flag.Duration("warmup", time.Second, "warm-up before measuring")
	maxN := flag.Int64("n", 5000000, "most round trips measured")
	flag.StringVar(&o.url, "url", "", "WebSocket URL (ws mode)")
	flag.StringVar(&o.frames, "frames", "dialog", "ws frames: dialog | echo")
	flag.StringVar(&o.target, "target", "", "gRPC host:port")
	flag.StringVar(&o.serverName, "server-name", "localhost", "TLS server name to verify")
	flag.StringVar(&o.caFile, "ca", "", "CA file (PEM) for TLS")
	flag.StringVar(&o.certFile, "cert", "", "client certificate (PEM), for mutual TLS")
	flag.StringVar(&o.keyFile, "key", "", "its private key (PEM)")
	flag.BoolVar(&o.plaintext, "plaintext", false, "no TLS")
	flag.StringVar(&o.path, "path", "", "gRPC method path (unary, bidi)")
	flag.StringVar(&o.user, "user", "bench", "x-dialog-user (converse)")
	flag.StringVar(&o.text, "text", "ping", "message text")
	tokens := flag.String("tokens", "", "file of bearer tokens, one a line; worker i uses line i mod n")
	pids := flag.String("pids", "", "name:pid,... whose CPU is measured over the window")
	hold := flag.Duration("hold", 3*time.Second, "idle: how long the connections stay open")
	openWithin := flag.Duration("open-within", 60*time.Second, "idle: time allowed to open them")
	dialParallel := flag.Int("dial-parallel", 50, "idle: connections opened at a time")
	base := flag.String("base", "", "sse: the gateway's https://host:port")
	messages := flag.Int("messages", 20, "sse: messages sent, one after the other")
	flag.Parse()
	limit := maxConcurrency
	if o.mode == "idle" || o.mode == "sse" {
		limit = maxConnections
	}
	if *dur > maxDuration || *hold > maxDuration || *openWithin > maxDuration ||
		*conc < 1 || *conc > limit || *maxN < 1 || *messages < 1 || *messages > maxMessages ||
		*dialParallel < 1 {
		log.Fatalf("bounded: -d, -hold, -open-within <= %s; 1 <= -c <= %d; 1 <= -messages <= %d",
			maxDuration, limit, maxMessages)
	}
	o.tokens = readTokens(*tokens)
	switch o.mode {
	case "idle":
		u, err := url.Parse(o.url)
		if err != nil {
			log.Fatal(err)
		}
		loopback(u.Host)
		holdIdle(&o, *conc, *dialParallel, *openWithin, *hold)
		return
	case "sse":
		u, err := url.Parse(*base)
		if err != nil {
			log.Fatal(err)
		}
		loopback(u.Host)
		fanOut(&o, *base, *conc, *messages, parsePids(*pids))
		return
	}
	if o.mode == "ws" {
		u, err := url.Parse(o.url)
		if err != nil {
			log.Fatal(err)
		}
		loopback(u.Host)
	} else {
		loopback(o.target)
	}

	workers := make([]worker, *conc)
	for i := range workers {
		w, err := open(&o, i)
		if err != nil {
			log.Fatalf("open worker %d: %v", i, err)
		}
		workers[i] = w
	}
	watched := parsePids(*pids)
	var recording int32
	var measured, errs int64
	var firstErr atomic.Value
	stopAt := time.Now().Add(*warm + *dur)
	lats := make([][]float64, *conc)
	ttfts := make([][]float64, *conc)
	var wg sync.WaitGroup
	for i, w := range workers {
		wg.Add(1)
		go func(i int, w worker) {
			defer wg.Done()
			l := make([]float64, 0, 1<<14)
			var tt []float64
			for seq := 1; time.Now().Before(stopAt); seq++ {
				rec := atomic.LoadInt32(&recording) == 1
				if rec && atomic.AddInt64(&measured, 1) > *maxN {
					break
				}
				t0 := time.Now()
				ttft, err := w.shot(fmt.Sprintf("load-%d-%d-%d", os.Getpid(), i, seq))
				if err != nil {
					firstErr.CompareAndSwap(nil, err.Error())
					if atomic.AddInt64(&errs, 1) > 1000 {
						break
					}
					time.Sleep(10 * time.Millisecond)
					continue
				}
				if rec {
					l = append(l, time.Since(t0).Seconds())
					if ttft >= 0 {
						tt = append(tt, ttft)
					}
				}
			}
			lats[i] = l
			ttfts[i] = tt
		}(i, w)
	}
	time.Sleep(*warm)
	errsWarm := atomic.LoadInt64(&errs)
	cpu0, self0, t0 := cpuOf(watched), selfCPU(), time.Now()
	atomic.StoreInt32(&recording, 1)
	wg.Wait()
	elapsed := time.Since(t0).Seconds()
	cpu1, self1 := cpuOf(watched), selfCPU()
	for _, w := range workers {
		w.close()
	}

	var all []float64
	for _, l := range lats {
		all = append(all, l...)
	}
	sort.Float64s(all)
	out := map[string]interface{}{
		"mode": o.mode, "concurrency": *conc, "ok": len(all), "errors": errs,
		"warmup_errors": errsWarm, "elapsed_s": elapsed,
		"rps":    float64(len(all)) / elapsed,
		"p50_ms": pct(all, 0.5) * 1e3, "p99_ms": pct(all, 0.99) * 1e3,
		"max_ms":       pct(all, 1) * 1e3,
		"client_cpu_s": self1 - self0,
	}
	cpu := map[string]float64{}
	for k, v0 := range cpu0 {
		if v1, ok := cpu1[k]; ok {
			cpu[k] = v1 - v0
		}
	}
	out["cpu_s"] = cpu
	var firsts []float64
	for _, t := range ttfts {
		firsts = append(firsts, t...)
	}
	if len(firsts) > 0 {
		sort.Float64s(firsts)
		out["ttft_p50_ms"] = pct(firsts, 0.5) * 1e3
		out["ttft_p99_ms"] = pct(firsts, 0.99) * 1e3
	}
	if e := firstErr.Load(); e != nil {
		out["first_error"] = e
	}
	if len(all) == 0 {
		for _, k := range []string{"p50_ms", "p99_ms", "max_ms"} {
			out[k] = nil
		}
	}
	b, _ := jsonMarshal(out)
	fmt.Println(string(b))
}
