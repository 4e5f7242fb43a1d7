package main

// coredump-receive serve: the long-running server for core_pattern "@@SOCKET" (Linux 6.17+).
//
//	coredump-receive serve -socket PATH [-m SIZE] [-f FREE] [-t SECONDS] [-max-clients N]
//	                       [-stats FILE] [-cgroup-root DIR] [-claim-pattern] [-fallback LINE] DIR
//	coredump-receive serve -socket PATH -fallback-file FILE [-claim-pattern] [-when-supported] ...
//
// With -fallback-file (what node setup writes: the pipe line of this very receiver), DIR and the
// limits are read from that line by the pipe receiver's own parser, so both paths apply one policy.
//
// It binds PATH (a new socket renamed over any old one, so a restarted server takes over without a
// moment where the path is missing), answers each crash's request after reading the crashing task's
// identity from its pidfd, and stores accepted cores with the pipe receiver's own code (store.go
// receive): same names, same facts file, same owner and mode, same limits. With -claim-pattern it
// points kernel.core_pattern at PATH once it listens; on SIGTERM it writes the -fallback line (the
// pipe receiver) if the pattern is still its own, drains the connections already queued, and exits.

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	corePatternPath = "/proc/sys/kernel/core_pattern"
	prSetDumpable   = 4
	cgroup2Magic    = 0x63677270
	// After the fallback pattern is written, crashes that connected just before still wait in the
	// backlog; the server accepts until none has arrived for this long.
	drainQuiet = 300 * time.Millisecond
)

type serveConfig struct {
	dir          string
	socket       string
	lim          limits
	maxClients   int
	statsPath    string
	cgroupRoot   string
	claimPattern bool
	fallback     string
	// whenSupported: on a kernel without the coredump socket, wait for SIGTERM and touch nothing.
	whenSupported bool
	// heartbeat is the shipper's (alive.go), next to the fallback line in the receiver's directory.
	heartbeat string
}

// serveStats are the server's counters, written as JSON to -stats after every crash.
type serveStats struct {
	Receiver    string         `json:"receiver"` // the version, for doctor
	Connections int            `json:"connections"`
	Stored      int            `json:"stored"`
	Truncated   int            `json:"truncated"`
	Rejected    map[string]int `json:"rejected"`
	Failed      int            `json:"failed"`
}

type server struct {
	cfg       serveConfig
	slots     chan struct{}
	mu        sync.Mutex
	stats     serveStats
	wg        sync.WaitGroup
	socketIno uint64 // the socket file this server created (the path may be taken over)
	socketDev uint64
	// stopping: SIGTERM arrived; the listener only drains what is already queued.
	stopping bool
}

func parseServeArgs(args []string) (serveConfig, error) {
	cfg := serveConfig{maxClients: 16}
	flags := flag.NewFlagSet("coredump-receive serve", flag.ContinueOnError)
	flags.SetOutput(io.Discard)
	flags.StringVar(&cfg.socket, "socket", "", "AF_UNIX socket path the kernel connects to")
	maxSize := flags.String("m", "0", "most bytes of a core to keep")
	free := flags.String("f", "0", "free space to leave on the filesystem (bytes with unit, or N%)")
	seconds := flags.Int("t", 600, "deadline in seconds for one crash, from connect to close")
	maxUse := flags.String("x", "10%", "most space DIR's files may take (bytes with unit, or N%; 0: no cap)")
	scope := flags.String("s", "pod", "pod: store only cores of processes in a Kubernetes pod; all: every process")
	flags.IntVar(&cfg.maxClients, "max-clients", cfg.maxClients, "crashes received at once; more wait for a slot until their deadline")
	flags.StringVar(&cfg.statsPath, "stats", "", "file the counters are written to (JSON)")
	flags.StringVar(&cfg.cgroupRoot, "cgroup-root", "/sys/fs/cgroup", "the host's cgroup2 mount, or the directory holding it as unified/")
	flags.BoolVar(&cfg.claimPattern, "claim-pattern", false, "point kernel.core_pattern at the socket once listening")
	flags.StringVar(&cfg.fallback, "fallback", "", "core_pattern to write on SIGTERM if it still names the socket")
	fallbackFile := flags.String("fallback-file", "", "file holding the pipe line: -fallback, DIR and limits from it")
	flags.BoolVar(&cfg.whenSupported, "when-supported", false, "idle (pipe capture stays) when the kernel has no coredump socket")
	if err := flags.Parse(args); err != nil {
		return cfg, err
	}
	// The size, floor and deadline are parsed exactly as the pipe receiver parses them.
	pipeArgs := []string{"-m", *maxSize, "-f", *free, "-x", *maxUse, "-s", *scope, "-t", fmt.Sprint(*seconds),
		"/", "1", "0", "0", "0", "0", "h", "e"}
	if *fallbackFile != "" {
		data, err := os.ReadFile(*fallbackFile)
		if err != nil {
			return cfg, fmt.Errorf("-fallback-file: %v", err)
		}
		cfg.fallback = strings.TrimSpace(string(data))
		if pipeArgs, err = pipeLineArgs(cfg.fallback); err != nil {
			return cfg, fmt.Errorf("-fallback-file: %v", err)
		}
	}
	c, lim, err := parseArgs(pipeArgs)
	if err != nil {
		return cfg, err
	}
	cfg.lim = lim
	cfg.cgroupRoot = findCgroup2(cfg.cgroupRoot)
	cfg.heartbeat = heartbeatPath
	if *fallbackFile != "" {
		cfg.heartbeat = filepath.Join(filepath.Dir(*fallbackFile), heartbeatPath)
	}
	if *fallbackFile != "" && flags.NArg() == 0 {
		cfg.dir = c.Dir
		return cfg, checkServeConfig(cfg)
	}
	if flags.NArg() != 1 || !strings.HasPrefix(flags.Arg(0), "/") {
		return cfg, errors.New("expected one absolute DIR")
	}
	cfg.dir = flags.Arg(0)
	return cfg, checkServeConfig(cfg)
}

// pipeLineArgs turns "|HELPER ARGS... DIR %P %u ..." into the arguments the kernel would pass,
// with a stand-in for every specifier: what parseArgs needs to read DIR and the limits.
func pipeLineArgs(line string) ([]string, error) {
	words := strings.Fields(line)
	if len(words) < 2 || !strings.HasPrefix(words[0], "|") {
		return nil, fmt.Errorf("not a pipe core_pattern: %q", line)
	}
	args := make([]string, 0, len(words)-1)
	for _, word := range words[1:] {
		if len(word) == 2 && word[0] == '%' && word[1] != '%' {
			word = "1"
		}
		args = append(args, strings.ReplaceAll(word, "%%", "%"))
	}
	return args, nil
}

func checkServeConfig(cfg serveConfig) error {
	if !strings.HasPrefix(cfg.socket, "/") || len(cfg.socket) > 100 {
		return fmt.Errorf("-socket: need an absolute path of at most 100 bytes, got %q", cfg.socket)
	}
	if cfg.maxClients < 1 {
		return errors.New("-max-clients: must be at least 1")
	}
	return nil
}

func socketPattern(path string) string { return "@@" + path }

func serveMain(args []string) int {
	// From the very start: a SIGTERM must never find the default action (death without hand-over).
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	cfg, err := parseServeArgs(args)
	if err != nil {
		logf("serve: bad arguments (%v)", err)
		return exitUsage
	}
	if !kernelHasSocket() {
		if !cfg.whenSupported {
			logf("serve: this kernel has no coredump socket (Linux 6.17+; /proc/sys/kernel/core_modes)")
			return exitFailed
		}
		logf("serve: this kernel has no coredump socket: pipe capture stays (kernel.core_pattern %q)", readPattern())
		<-stop
		return exitOK
	}
	// A server that dumped core into its own socket would wait for itself for ever.
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetDumpable, 0, 0); errno != 0 {
		logf("serve: prctl(PR_SET_DUMPABLE, 0): %v", errno)
		return exitFailed
	}
	listener, err := listenReplacing(cfg.socket)
	if err != nil {
		logf("serve: %v", err)
		return exitFailed
	}
	srv := &server{cfg: cfg, slots: make(chan struct{}, cfg.maxClients), stats: serveStats{Receiver: version, Rejected: map[string]int{}}}
	var st syscall.Stat_t
	if err := syscall.Lstat(cfg.socket, &st); err == nil {
		srv.socketIno, srv.socketDev = st.Ino, st.Dev
	}
	if cfg.claimPattern {
		if err := writePattern(socketPattern(cfg.socket)); err != nil {
			logf("serve: cannot set kernel.core_pattern: %v", err)
			listener.Close()
			return exitFailed
		}
	}
	srv.writeStats() // the first counters also say "ready": listening, and the pattern claimed
	logf("serve: listening on %s for %s (kernel.core_pattern %q)", cfg.socket, cfg.dir, readPattern())

	accepted := make(chan struct{})
	go func() {
		srv.acceptUntilClosed(listener)
		close(accepted)
	}()
	<-stop
	srv.handOver(listener)
	<-accepted
	srv.wg.Wait()
	logf("serve: stopped")
	return exitOK
}

// listenReplacing binds a fresh socket next to path and renames it over path: the kernel finds a
// listening socket at path at every moment, the old server's or this one's.
func listenReplacing(path string) (*net.UnixListener, error) {
	fresh := fmt.Sprintf("%s.%d.new", path, os.Getpid())
	_ = os.Remove(fresh)
	listener, err := net.ListenUnix("unix", &net.UnixAddr{Name: fresh, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %v", fresh, err)
	}
	listener.SetUnlinkOnClose(false)
	// Only the kernel (and root) connects: it resolves the path with kernel credentials.
	if err = os.Chmod(fresh, 0o600); err == nil {
		if err = os.Rename(fresh, path); err == nil {
			return listener, nil
		}
	}
	listener.Close()
	_ = os.Remove(fresh)
	return nil, fmt.Errorf("install socket %s: %v", path, err)
}

// writePattern writes kernel.core_pattern from the initial mount namespace: the kernel refuses a
// socket pattern ("@...") written from any other (EINVAL), and a container has its own. A thread
// of its own enters that namespace through a task that lives in it (the pod runs with hostPID: pid
// 1, the host's init, or pid 2, kthreadd, whose namespaces are the kernel's own and which some
// hosts let root open when they guard their init). It first stops sharing its filesystem context
// with the other threads, which setns(CLONE_NEWNS) requires, and is never handed back to the Go
// scheduler: it ends with its goroutine.
func writePattern(line string) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		done <- func() error {
			if err := syscall.Unshare(syscall.CLONE_FS); err != nil {
				return fmt.Errorf("unshare(CLONE_FS): %v", err)
			}
			var last error
			for _, task := range []string{"/proc/1/ns/mnt", "/proc/2/ns/mnt"} {
				if last = enterMountNamespace(task); last == nil {
					return os.WriteFile(corePatternPath, []byte(line+"\n"), 0)
				}
			}
			return last
		}()
	}()
	return <-done
}

func enterMountNamespace(path string) error {
	ns, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %v", path, err)
	}
	defer syscall.Close(ns)
	if _, _, errno := syscall.Syscall(sysSetns, uintptr(ns), syscall.CLONE_NEWNS, 0); errno != 0 {
		return fmt.Errorf("enter %s: %v", path, errno)
	}
	return nil
}

func readPattern() string {
	data, _ := os.ReadFile(corePatternPath)
	return strings.TrimRight(string(data), "\n")
}

// handOver stops taking crashes without dropping one: first the kernel is pointed elsewhere (if
// asked), then the backlog is drained, and the socket is removed only if it is still this server's.
func (s *server) handOver(listener *net.UnixListener) {
	// A newer server that renamed its socket over ours owns the path and the pattern now: both stay.
	var now syscall.Stat_t
	ours := syscall.Lstat(s.cfg.socket, &now) == nil && now.Ino == s.socketIno && now.Dev == s.socketDev
	if ours && s.cfg.fallback != "" && readPattern() == socketPattern(s.cfg.socket) {
		if err := writePattern(s.cfg.fallback); err != nil {
			logf("serve: cannot write the fallback core_pattern: %v", err)
		} else {
			logf("serve: kernel.core_pattern handed back to %q", s.cfg.fallback)
		}
	}
	if ours {
		_ = os.Remove(s.cfg.socket)
	} else {
		logf("serve: %s belongs to a newer server: leaving it and kernel.core_pattern alone", s.cfg.socket)
	}
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	_ = listener.SetDeadline(time.Now().Add(drainQuiet))
}

func (s *server) acceptUntilClosed(listener *net.UnixListener) {
	defer listener.Close()
	for {
		conn, err := listener.AcceptUnix()
		if err != nil {
			var timeout net.Error
			if errors.As(err, &timeout) && timeout.Timeout() {
				return // draining after SIGTERM, and quiet for drainQuiet
			}
			logf("serve: accept: %v", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if deadline, ok := s.draining(); ok {
			_ = listener.SetDeadline(deadline)
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(conn)
		}()
	}
}

// draining extends the drain window after each connection that arrives once SIGTERM did.
func (s *server) draining() (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return time.Now().Add(drainQuiet), s.stopping
}

func (s *server) count(update func(*serveStats)) {
	s.mu.Lock()
	update(&s.stats)
	s.mu.Unlock()
	s.writeStats()
}

func (s *server) writeStats() {
	if s.cfg.statsPath == "" {
		return
	}
	// Under the lock: connections finish at once, and they share the temporary name.
	s.mu.Lock()
	defer s.mu.Unlock()
	data, _ := json.Marshal(s.stats)
	tmp := fmt.Sprintf("%s.%d.tmp", s.cfg.statsPath, os.Getpid())
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err == nil {
		_ = os.Rename(tmp, s.cfg.statsPath)
	}
}

// policy says whether this crash may be stored: "" yes, otherwise the reason it is rejected.
func (s *server) policy() string {
	dirfd, err := syscall.Open(s.cfg.dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return "no-directory"
	}
	defer syscall.Close(dirfd)
	// The pipe receiver's own floor: below it, it would store an empty core cut short (keep-free).
	guard := &spaceGuard{fd: dirfd, dirfd: dirfd, lim: s.cfg.lim}
	if reason := guard.allow(factsSpace); reason != "" {
		return reason // keep-free or max-use
	}
	// The pipe receiver's -a (alive.go, set by the pipe line): no shipper alive, nothing stored.
	if aliveWindow > 0 {
		if alive, _ := shipperAlive(s.cfg.dir, s.cfg.heartbeat, aliveWindow, time.Now()); !alive {
			return "no-shipper"
		}
	}
	return ""
}

func (s *server) handle(conn *net.UnixConn) {
	start := time.Now()
	deadline := start.Add(s.cfg.lim.Deadline)
	s.count(func(st *serveStats) { st.Connections++ })
	pidfd := -1
	if raw, err := conn.SyscallConn(); err == nil {
		_ = raw.Control(func(fd uintptr) { pidfd, err = peerPidfd(int(fd)) })
		if err != nil {
			logf("serve: %v", err)
		}
	}
	file, err := conn.File()
	conn.Close()
	if err != nil {
		logf("serve: connection: %v", err)
		s.count(func(st *serveStats) { st.Failed++ })
		return
	}
	// Closing the connection is what lets the crashed task finish (COREDUMP_WAIT).
	defer file.Close()
	_ = file.SetDeadline(deadline)
	if pidfd < 0 {
		s.count(func(st *serveStats) { st.Failed++ })
		return
	}
	defer syscall.Close(pidfd)
	who, err := identify(pidfd, s.cfg.cgroupRoot)
	if err != nil {
		logf("serve: crash without identity: %v", err)
		s.count(func(st *serveStats) { st.Failed++ })
		return
	}
	req, err := readRequest(file)
	if err != nil {
		logf("serve: pid %d (%s): %v", who.pid, who.comm, err)
		s.count(func(st *serveStats) { st.Failed++ })
		return
	}
	// A crash beyond -max-clients waits for a slot (the kernel holds the task meanwhile) rather
	// than being dropped, as core_pipe_limit drops pipe crashes; only the deadline ends the wait.
	reason := ""
	wait := time.NewTimer(time.Until(deadline))
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
		reason = s.policy()
	case <-wait.C:
		reason = "busy"
	}
	wait.Stop()
	ack, err := answer(req, reason == "")
	if err == nil {
		_, err = file.Write(ack.encode())
	}
	if err == nil {
		err = readMark(file)
	}
	if err != nil {
		logf("serve: pid %d (%s): %v", who.pid, who.comm, err)
		s.count(func(st *serveStats) { st.Failed++ })
		return
	}
	if reason != "" {
		logf("serve: pid %d (%s): core rejected (%s)", who.pid, who.comm, reason)
		s.count(func(st *serveStats) { st.Rejected[reason]++ })
		return
	}
	c := crash{Dir: s.cfg.dir, GlobalPID: who.pid, UID: who.uid, GID: who.gid, Signal: who.signal,
		Time: start.Unix(), Hostname: who.hostname, Comm: who.comm, Capture: captureSocket}
	lim := s.cfg.lim
	// The pidfd's dump mode, as %d gives it to the pipe receiver; unknown counts as suid-safe.
	lim.DumpMode = who.dumpMode
	if lim.DumpMode != dumpUser {
		lim.DumpMode = dumpRoot
	}
	lim.Deadline = time.Until(deadline)
	if lim.Deadline <= 0 {
		lim.Deadline = time.Millisecond
	}
	result, err := receive(c, lim, who.proc, file)
	if err != nil {
		logf("serve: pid %d (%s): core not stored: %v", who.pid, who.comm, err)
		s.count(func(st *serveStats) { st.Failed++ })
		return
	}
	if result.Dropped != "" {
		logf("serve: pid %d (%s): core not stored: %s", who.pid, who.comm, result.Dropped)
		s.count(func(st *serveStats) { st.Rejected[result.record]++ })
		return
	}
	if result.Truncated != "" {
		logf("serve: pid %d (%s): core cut short at %d bytes (%s): stored as %s", who.pid, who.comm, result.Size, result.Truncated, result.Name)
		s.count(func(st *serveStats) { st.Stored++; st.Truncated++ })
		return
	}
	s.count(func(st *serveStats) { st.Stored++ })
}

// findCgroup2 is the unified hierarchy: base itself, or base/unified on hybrid (v1 + v2) hosts.
func findCgroup2(base string) string {
	for _, path := range []string{base, base + "/unified"} {
		var fs syscall.Statfs_t
		if syscall.Statfs(path, &fs) == nil && fs.Type == cgroup2Magic {
			return path
		}
	}
	return base
}

// kernelHasSocket: /proc/sys/kernel/core_modes (Linux 6.17+) lists "socket".
func kernelHasSocket() bool {
	data, err := os.ReadFile("/proc/sys/kernel/core_modes")
	if err != nil {
		return false
	}
	for _, mode := range strings.Fields(string(data)) {
		if mode == "socket" {
			return true
		}
	}
	return false
}
