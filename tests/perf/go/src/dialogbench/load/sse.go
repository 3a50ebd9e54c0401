package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/ioutil"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// fanOut measures server-sent event fan-out: n subscribers of one user's
// GET /events/stream, then messages POSTs of that user, one after the other;
// each message's final reply must reach every subscriber before the next is
// sent. The latency of a delivery is from the POST's start to its arrival at
// one subscriber.
func fanOut(o *options, base string, n, messages int, watched map[string][]int) {
	cfg, err := tlsConfig(o)
	if err != nil {
		fail(err)
	}
	transport := &http.Transport{TLSClientConfig: cfg, MaxIdleConnsPerHost: 4}
	client := &http.Client{Transport: transport}
	token := o.token(0)
	sentAt := make([]int64, messages)
	left := make([]int64, messages)
	done := make([]chan struct{}, messages)
	for k := range done {
		left[k] = int64(n)
		done[k] = make(chan struct{})
	}
	prefix := fmt.Sprintf("fan-%d-", os.Getpid())
	var mu sync.Mutex
	var lats []float64
	var connected sync.WaitGroup
	var failed int64
	var firstErr atomic.Value
	connected.Add(n)
	for i := 0; i < n; i++ {
		go func() {
			req, _ := http.NewRequest("GET", base+"/events/stream", nil)
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := client.Do(req)
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("GET /events/stream: HTTP %d", resp.StatusCode)
			}
			connected.Done()
			if err != nil {
				firstErr.CompareAndSwap(nil, err.Error())
				atomic.AddInt64(&failed, 1)
				return
			}
			defer resp.Body.Close()
			readEvents(resp.Body, prefix, func(k int) {
				lat := float64(time.Now().UnixNano()-atomic.LoadInt64(&sentAt[k])) / 1e9
				mu.Lock()
				lats = append(lats, lat)
				mu.Unlock()
				if atomic.AddInt64(&left[k], -1) == 0 {
					close(done[k])
				}
			})
		}()
	}
	connected.Wait()
	subscribers := n - int(failed)
	for k := range left {
		atomic.AddInt64(&left[k], -failed)
	}
	// Subscriptions start when their response headers are sent; give the gateway a moment
	// to register the last ones before the first message.
	time.Sleep(200 * time.Millisecond)
	cpu0, self0, t0 := cpuOf(watched), selfCPU(), time.Now()
	var errs int64
	for k := 0; k < messages && subscribers > 0; k++ {
		atomic.StoreInt64(&sentAt[k], time.Now().UnixNano())
		body := fmt.Sprintf(`{"id":"%s%d","role":"user","content":{"type":"text","text":%q}}`,
			prefix, k, o.text)
		req, _ := http.NewRequest("POST", base+"/messages", bytes.NewBufferString(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err == nil {
			io.Copy(ioutil.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("POST /messages: HTTP %d", resp.StatusCode)
			}
		}
		if err != nil {
			firstErr.CompareAndSwap(nil, err.Error())
			errs++
			continue
		}
		select {
		case <-done[k]:
		case <-time.After(shotTimeout):
			firstErr.CompareAndSwap(nil, fmt.Sprintf("message %d: %d subscribers missed it",
				k, atomic.LoadInt64(&left[k])))
			errs++
		}
	}
	elapsed := time.Since(t0).Seconds()
	cpu1, self1 := cpuOf(watched), selfCPU()
	transport.CloseIdleConnections()
	mu.Lock()
	sort.Float64s(lats)
	all := lats
	mu.Unlock()
	cpu := map[string]float64{}
	for name, v0 := range cpu0 {
		cpu[name] = cpu1[name] - v0
	}
	out := map[string]interface{}{
		"mode": "sse", "concurrency": n, "subscribers": subscribers, "messages": messages,
		"ok": len(all), "errors": errs + failed, "elapsed_s": elapsed,
		"p50_ms": pct(all, 0.5) * 1e3, "p99_ms": pct(all, 0.99) * 1e3,
		"max_ms": pct(all, 1) * 1e3, "client_cpu_s": self1 - self0, "cpu_s": cpu,
	}
	if e := firstErr.Load(); e != nil {
		out["first_error"] = e
	}
	if len(all) == 0 {
		out["p50_ms"], out["p99_ms"], out["max_ms"] = nil, nil, nil
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
	os.Exit(0) // the subscribers' streams end with the process
}

// readEvents calls delivered(k) for each event whose data is the final reply to
// message prefix+k (docs/protocol.md: anything but an ack, a delta or an event).
func readEvents(body io.Reader, prefix string, delivered func(int)) {
	scanner := bufio.NewScanner(body)
	scanner.Buffer(make([]byte, 64<<10), 1<<20)
	for scanner.Scan() {
		line := scanner.Text()
		if !strings.HasPrefix(line, "data:") {
			continue
		}
		var f wsFrame
		if json.Unmarshal([]byte(strings.TrimSpace(line[5:])), &f) != nil {
			continue
		}
		final := f.Content.Type != "ack" && f.Content.Type != "delta" && f.Role != "event"
		if !final || !strings.HasPrefix(f.Context.ReplyTo, prefix) {
			continue
		}
		var k int
		if _, err := fmt.Sscanf(f.Context.ReplyTo[len(prefix):], "%d", &k); err == nil {
			delivered(k)
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
