// etcdload: closed-loop put/get load for etcd 3.4 over gRPC, the etcd side of benches/compare.
// Build (offline, Debian's packaged client sources): see ../run.py (GOPATH mode, GO111MODULE=off).
// Each of -clients goroutines issues one request at a time (a read with probability -read-frac,
// linearizable like etcd's default Get; else a Put) over -conns shared connections, for -duration
// after -warmup, at most -max-ops requests. Loopback endpoints only. Prints one JSON line.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/clientv3"
)

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:23790", "comma-separated loopback endpoints")
	clients := flag.Int("clients", 64, "concurrent closed-loop clients")
	conns := flag.Int("conns", 1, "gRPC connections")
	duration := flag.Duration("duration", 10*time.Second, "measured duration")
	warmup := flag.Duration("warmup", 2*time.Second, "unmeasured warmup")
	vsize := flag.Int("val-size", 100, "value bytes")
	nkeys := flag.Int("keys", 10000, "key space")
	readFrac := flag.Float64("read-frac", 0, "fraction of requests that are reads")
	maxOps := flag.Int64("max-ops", 5000000, "hard cap on requests")
	flag.Parse()
	eps := strings.Split(*endpoints, ",")
	for _, e := range eps {
		if !strings.HasPrefix(e, "127.") {
			fmt.Fprintln(os.Stderr, "loopback endpoints only")
			os.Exit(2)
		}
	}
	cs := make([]*clientv3.Client, *conns)
	for i := range cs {
		c, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer c.Close()
		cs[i] = c
	}
	val := strings.Repeat("v", *vsize)
	if *readFrac > 0 { // reads should find values
		ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
		for k := 0; k < *nkeys; k++ {
			if _, err := cs[0].Put(ctx, fmt.Sprintf("bench/k%08d", k), val); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}
		cancel()
	}
	start := time.Now()
	measStart := start.Add(*warmup)
	end := measStart.Add(*duration)
	var mu sync.Mutex
	var all []time.Duration
	var errs, sent, reads, writes int64
	var wg sync.WaitGroup
	for w := 0; w < *clients; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c := cs[w%*conns]
			rng := rand.New(rand.NewSource(int64(w) + 1))
			local := make([]time.Duration, 0, 1<<16)
			var r, wr int64
			for {
				st := time.Now()
				if !st.Before(end) || atomic.AddInt64(&sent, 1) > *maxOps {
					break
				}
				key := fmt.Sprintf("bench/k%08d", rng.Intn(*nkeys))
				isRead := rng.Float64() < *readFrac
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				var err error
				if isRead {
					_, err = c.Get(ctx, key)
				} else {
					_, err = c.Put(ctx, key, val)
				}
				cancel()
				en := time.Now()
				if st.After(measStart) && en.Before(end) {
					if err != nil {
						atomic.AddInt64(&errs, 1)
					} else {
						local = append(local, en.Sub(st))
						if isRead {
							r++
						} else {
							wr++
						}
					}
				}
			}
			atomic.AddInt64(&reads, r)
			atomic.AddInt64(&writes, wr)
			mu.Lock()
			all = append(all, local...)
			mu.Unlock()
		}(w)
	}
	wg.Wait()
	sort.Slice(all, func(a, b int) bool { return all[a] < all[b] })
	pct := func(p float64) float64 {
		if len(all) == 0 {
			return -1
		}
		k := int(p / 100 * float64(len(all)))
		if k >= len(all) {
			k = len(all) - 1
		}
		return float64(all[k].Microseconds()) / 1000
	}
	out := map[string]interface{}{
		"clients": *clients, "conns": *conns, "read_frac": *readFrac, "errors": errs,
		"ops_per_s":    float64(len(all)) / duration.Seconds(),
		"writes_per_s": float64(writes) / duration.Seconds(),
		"p50_ms":       pct(50), "p99_ms": pct(99), "p999_ms": pct(99.9),
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
}
