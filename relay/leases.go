package relay

import (
	"sort"
	"sync"
)

// lease is one partition this relay holds.
type lease struct {
	token     int64
	busy      int  // workers with a batch of this partition in flight
	releasing bool // to be released once busy drops to zero
}

// leaseSet is the relay's view of its leases, shared by the lease loop
// (which acquires, renews and releases) and the workers (which check out
// their partitions for one round).
type leaseSet struct {
	mu   sync.Mutex
	held map[int32]*lease
}

func newLeaseSet() *leaseSet { return &leaseSet{held: map[int32]*lease{}} }

// checkout returns the partitions of worker w (partition mod workers == w)
// and their tokens, and marks them busy until checkin.
func (s *leaseSet) checkout(w, workers int) ([]int32, []int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var parts []int32
	for p, l := range s.held {
		if int(p)%workers == w && !l.releasing {
			parts = append(parts, p)
		}
	}
	sort.Slice(parts, func(i, j int) bool { return parts[i] < parts[j] })
	tokens := make([]int64, len(parts))
	for i, p := range parts {
		l := s.held[p]
		l.busy++
		tokens[i] = l.token
	}
	return parts, tokens
}

func (s *leaseSet) checkin(parts []int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range parts {
		if l, ok := s.held[p]; ok {
			l.busy--
		}
	}
}

// snapshot returns every held partition and its token.
func (s *leaseSet) snapshot() ([]int32, []int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	parts := make([]int32, 0, len(s.held))
	for p := range s.held {
		parts = append(parts, p)
	}
	sort.Slice(parts, func(i, j int) bool { return parts[i] < parts[j] })
	tokens := make([]int64, len(parts))
	for i, p := range parts {
		tokens[i] = s.held[p].token
	}
	return parts, tokens
}

func (s *leaseSet) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.held)
}

func (s *leaseSet) add(p int32, token int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.held[p] = &lease{token: token}
}

// keepOnly drops the partitions that were not renewed (lost to another relay).
func (s *leaseSet) keepOnly(renewed map[int32]bool) []int32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var lost []int32
	for p := range s.held {
		if !renewed[p] {
			lost = append(lost, p)
			delete(s.held, p)
		}
	}
	return lost
}

// shrinkTo marks the highest partitions beyond n for release and returns
// those that are idle now (with tokens), removing them from the set.
func (s *leaseSet) shrinkTo(n int) ([]int32, []int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	parts := make([]int32, 0, len(s.held))
	for p := range s.held {
		parts = append(parts, p)
	}
	sort.Slice(parts, func(i, j int) bool { return parts[i] < parts[j] })
	for i, p := range parts {
		s.held[p].releasing = i >= n
	}
	return s.takeReleasable()
}

// takeAll marks every lease for release and returns the idle ones.
func (s *leaseSet) takeAll() ([]int32, []int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.held {
		l.releasing = true
	}
	return s.takeReleasable()
}

func (s *leaseSet) takeReleasable() ([]int32, []int64) {
	var parts []int32
	var tokens []int64
	for p, l := range s.held {
		if l.releasing && l.busy == 0 {
			parts = append(parts, p)
			tokens = append(tokens, l.token)
			delete(s.held, p)
		}
	}
	return parts, tokens
}
