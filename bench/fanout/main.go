// Command fanout-subscribers is one process of fan-out subscribers for `make bench`
// (bench/side_by_side.py starts several; bench/fanout_subscribers.py is the same in Python).
//
//	fanout-subscribers -address HOST:PORT -token T -subscribers N -signal-type TYPE [-per-channel 50]
//
// It holds N live subscriptions of TYPE (the Go client's Subscription, which unpacks batches),
// spread over connections of -per-channel subscriptions each, and talks to its parent over
// stdin/stdout, one line at a time:
//
//  1. prints `ready` once every subscription has received a warm-up signal (data `seq` < 0);
//  2. reads a line {"ids": [...]}: the ids of the timed signals the parent sent;
//  3. waits until every subscription has every one of them (at most -grace), prints `done`, then
//     {"deliveries", "lost", "duplicated", "first", "last", "cpu", "latencies"}: counted per
//     subscriber by signal id; a latency is the signal's data `t` (CLOCK_MONOTONIC seconds taken
//     just before the parent's SendSignal call; one clock for every process of the host) to the
//     moment Recv returned it, seconds; first/last are CLOCK_MONOTONIC seconds of the first and
//     last timed delivery; cpu is this process's CPU seconds from `ready` to `done`.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"math"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	agentcoord "github.com/agentcoord/agentcoord/clients/go"
)

func monotonic() float64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		log.Fatal(err)
	}
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}

func cpuSeconds() float64 {
	var usage unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &usage); err != nil {
		log.Fatal(err)
	}
	return float64(usage.Utime.Sec+usage.Stime.Sec) + float64(usage.Utime.Usec+usage.Stime.Usec)/1e6
}

// subscriber is one subscription's record; guarded by state.mu.
type subscriber struct {
	counts map[string]int
	warm   bool
}

type state struct {
	mu        sync.Mutex
	subs      []*subscriber
	waiting   int // subscriptions without a warm-up signal yet
	ready     chan struct{}
	target    map[string]bool
	remaining int // deliveries of target ids still missing, once target is set
	complete  chan struct{}
	latencies []float64
	first     float64
	last      float64
}

func (s *state) receive(index int, id string, seq, sent, now float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub := s.subs[index]
	if seq < 0 {
		if !sub.warm {
			sub.warm = true
			s.waiting--
			if s.waiting == 0 {
				close(s.ready)
			}
		}
		return
	}
	sub.counts[id]++
	if sub.counts[id] != 1 {
		return
	}
	s.latencies = append(s.latencies, now-sent)
	s.first = math.Min(s.first, now)
	s.last = now
	if s.target != nil && s.target[id] {
		s.remaining--
		if s.remaining == 0 {
			close(s.complete)
		}
	}
}

func main() {
	address := flag.String("address", "", "host:port of the server")
	token := flag.String("token", "", "bearer token")
	subscribers := flag.Int("subscribers", 0, "subscriptions to hold")
	signalType := flag.String("signal-type", "", "the signal type followed")
	perChannel := flag.Int("per-channel", 50, "subscriptions per connection")
	grace := flag.Duration("grace", 15*time.Second, "how long to wait for stragglers")
	flag.Parse()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	channels := (*subscribers + *perChannel - 1) / *perChannel
	clients := make([]*agentcoord.Client, channels)
	for i := range clients {
		client, err := agentcoord.Dial(ctx, *address, *token)
		if err != nil {
			log.Fatal(err)
		}
		defer client.Close()
		clients[i] = client
	}
	s := &state{
		waiting:  *subscribers,
		ready:    make(chan struct{}),
		complete: make(chan struct{}),
		first:    math.Inf(1),
	}
	var wg sync.WaitGroup
	for i := 0; i < *subscribers; i++ {
		s.subs = append(s.subs, &subscriber{counts: map[string]int{}})
	}
	for i := 0; i < *subscribers; i++ {
		sub, err := clients[i%channels].Subscribe(ctx, agentcoord.SubscribeOptions{SignalTypes: []string{*signalType}})
		if err != nil {
			log.Fatal(err)
		}
		wg.Add(1)
		go func(index int) {
			defer wg.Done()
			defer sub.Close()
			for {
				signal, err := sub.Recv()
				if err != nil {
					return // ctx cancelled at the end
				}
				now := monotonic()
				fields := signal.GetData().GetFields()
				s.receive(index, signal.GetId(), fields["seq"].GetNumberValue(), fields["t"].GetNumberValue(), now)
			}
		}(i)
	}
	<-s.ready
	fmt.Println("ready")
	cpu := cpuSeconds()

	line, err := bufio.NewReaderSize(os.Stdin, 1<<20).ReadBytes('\n')
	if err != nil {
		log.Fatal(err)
	}
	var sent struct {
		IDs []string `json:"ids"`
	}
	if err := json.Unmarshal(line, &sent); err != nil {
		log.Fatal(err)
	}
	s.mu.Lock()
	s.target = map[string]bool{}
	for _, id := range sent.IDs {
		s.target[id] = true
	}
	for _, sub := range s.subs {
		for id := range s.target {
			if sub.counts[id] == 0 {
				s.remaining++
			}
		}
	}
	if s.remaining == 0 {
		close(s.complete)
	}
	s.mu.Unlock()
	select {
	case <-s.complete:
	case <-time.After(*grace):
	}
	cpu = cpuSeconds() - cpu
	fmt.Println("done")

	s.mu.Lock()
	result := map[string]any{"cpu": cpu, "first": s.first, "last": s.last}
	lost, duplicated, deliveries := 0, 0, 0
	for _, sub := range s.subs {
		for id := range s.target {
			if sub.counts[id] == 0 {
				lost++
			}
		}
		for id, n := range sub.counts {
			if s.target[id] {
				deliveries++
			}
			if n > 1 {
				duplicated += n - 1
			}
		}
	}
	if math.IsInf(s.first, 1) {
		result["first"] = 0.0
	}
	result["deliveries"], result["lost"], result["duplicated"] = deliveries, lost, duplicated
	result["latencies"] = s.latencies
	s.mu.Unlock()
	out, err := json.Marshal(result)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(out))
	os.Stdout.Sync()
	os.Exit(0) // the open subscriptions end with the process
}
