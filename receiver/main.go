// coredump-receive: the kernel.core_pattern pipe helper of coredump-shipper.
//
// The kernel runs it as root, in the host's initial namespaces, for every crash, with the core on
// standard input:
//
//	|/var/lib/coredump-shipper/coredump-receive -d %d [-m SIZE] [-f FREE] [-x MAXUSE] [-s pod|all] [-t SECONDS] [-a WINDOW] DIR %P %u %g %s %t %h %e
//
// It reads the crashed process's cgroup (pod UID, container ID) while /proc/<pid> still exists.
// With the default scope (-s pod) a process outside any pod (a host daemon: kubelet, containerd,
// a login session) is not stored at all. Otherwise it streams the core into a temporary dot-file
// in DIR (sparse, bounded by -m, the free-space floor -f, the directory's cap -x and the deadline
// -t, re-checked while writing), hands both files to DIR's owner (the shipper), renames the crash
// facts in as ".<core>.crash.json" and then the core as "core.<h>.<e>.sig<s>.<P>.<t>", which the
// shipper's inotify watch sees as one IN_MOVED_TO. A suid-safe dump (-d 2: the kernel's %d for a
// process that changed credentials) is stored read-only (0400) and never for the uid that crashed.
// Every core dropped or cut short leaves a record in DIR/.coredump-receive.failures/ for the
// shipper to count. On any error it logs one line and leaves no temporary file.
//
// Standard library only, statically linked (CGO_ENABLED=0): it must run on any node without
// anything from the host.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// version is set at build time (-ldflags "-X main.version=...") to the shipper's version.
var version = "dev"

const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
)

// crash is what the kernel said about the crash, from the core_pattern specifiers.
type crash struct {
	Dir       string
	GlobalPID int
	UID       uint32
	GID       uint32
	Signal    int
	Time      int64
	Hostname  string
	Comm      string
	Capture   string // how the kernel handed the core over: capturePipe or captureSocket
}

// The ways a core reaches this binary, recorded in its facts (and so in the object's manifest).
const (
	capturePipe   = "pipe"   // core_pattern `|PATH`: this process, the core on standard input
	captureSocket = "socket" // core_pattern `@@PATH`: `serve`, the core on a connection
)

// Dump modes the kernel passes as %d (fs.suid_dumpable's values as applied to this process).
const (
	dumpUnknown = 0 // the pattern line has no -d (an older line): treated as the safe case below
	dumpUser    = 1 // an ordinary dump
	dumpRoot    = 2 // suid-safe: the process changed credentials; its memory may hold root's secrets
)

// diskLimit is bytes or a percentage of the filesystem's size; zero is "not set".
type diskLimit struct {
	Bytes   int64
	Percent float64
}

func (d diskLimit) set() bool { return d.Bytes > 0 || d.Percent > 0 }

func (d diskLimit) resolve(total int64) int64 {
	if d.Percent > 0 {
		return int64(float64(total) * d.Percent / 100)
	}
	return d.Bytes
}

// limits protect the node, like systemd-coredump's ProcessSizeMax, KeepFree, MaxUse and its timeout.
type limits struct {
	MaxSize  int64     // bytes of core kept at most; 0: no cap
	Free     diskLimit // space to leave free on the filesystem
	MaxUse   diskLimit // most space the directory's files may take
	Deadline time.Duration
	AllScope bool // store host processes' cores too (-s all); by default only pods' cores
	DumpMode int  // %d
}

func (l limits) floorSet() bool { return l.Free.set() }
func (l limits) capSet() bool   { return l.MaxUse.set() }

var logKernel bool

// logf writes one line: to stderr, and to the kernel log when the kernel gave no stderr.
func logf(format string, args ...interface{}) {
	line := "coredump-receive: " + fmt.Sprintf(format, args...)
	line = strings.ReplaceAll(line, "\n", " ")
	fmt.Fprintln(os.Stderr, line)
	if logKernel {
		if kmsg, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
			fmt.Fprintf(kmsg, "<3>%s\n", line)
			kmsg.Close()
		}
	}
}

// guardStandardFds opens /dev/null on closed descriptors 1 and 2: a usermode helper starts with
// only standard input, and a file opened later must never land on fd 2, where a log line would be
// written into the core.
func guardStandardFds() {
	for fd := 1; fd <= 2; fd++ {
		if _, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_GETFD, 0); errno == 0 {
			continue
		}
		if fd == 2 {
			logKernel = true
		}
		null, err := syscall.Open("/dev/null", syscall.O_RDWR, 0)
		if err != nil {
			os.Exit(exitFailed)
		}
		if null != fd {
			syscall.Dup3(null, fd, 0)
			syscall.Close(null)
		}
	}
}

// parseSize accepts bytes with an optional binary unit: 512, 64K, 100M, 32G, 1T.
func parseSize(text string) (int64, error) {
	units := map[byte]int64{'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30, 'T': 1 << 40}
	multiplier := int64(1)
	if n := len(text); n > 0 {
		if unit, ok := units[text[n-1]]; ok {
			multiplier, text = unit, text[:n-1]
		}
	}
	value, err := strconv.ParseInt(text, 10, 64)
	if err != nil || value < 0 || value > (1<<62)/multiplier {
		return 0, fmt.Errorf("not a size: %q", text)
	}
	return value * multiplier, nil
}

// parseDiskLimit accepts a size (parseSize) or a percentage of the filesystem: "15%".
func parseDiskLimit(text string) (diskLimit, error) {
	if pct := strings.TrimSuffix(text, "%"); pct != text {
		value, err := strconv.ParseFloat(pct, 64)
		if err != nil || !(value >= 0 && value <= 100) {
			return diskLimit{}, fmt.Errorf("not a percentage: %q", text)
		}
		return diskLimit{Percent: value}, nil
	}
	value, err := parseSize(text)
	return diskLimit{Bytes: value}, err
}

func parseArgs(args []string) (crash, limits, error) {
	var c crash
	lim := limits{Deadline: 10 * time.Minute}
	flags := flag.NewFlagSet("coredump-receive", flag.ContinueOnError)
	flags.SetOutput(io.Discard)
	maxSize := flags.String("m", "0", "most bytes of a core to keep (K, M, G, T units; 0: no cap)")
	free := flags.String("f", "0", "free space to leave on the filesystem (bytes with unit, or N%)")
	// -x defaults to the shipper's --max-use default, so the line (127 bytes at most) leaves it out.
	maxUse := flags.String("x", "10%", "most space DIR's files may take (bytes with unit, or N% of the filesystem; 0: no cap)")
	scope := flags.String("s", "pod", "pod: store only cores of processes in a Kubernetes pod; all: every process")
	mode := flags.Int("d", dumpUnknown, "the kernel's %d: 1 ordinary dump, 2 suid-safe dump")
	seconds := flags.Int("t", 600, "deadline in seconds: the crashed process stays a zombie until we exit")
	registerAliveFlag(flags) // -a (alive.go)
	if err := flags.Parse(args); err != nil {
		return c, lim, err
	}
	var err error
	if lim.MaxSize, err = parseSize(*maxSize); err != nil {
		return c, lim, fmt.Errorf("-m: %v", err)
	}
	if lim.Free, err = parseDiskLimit(*free); err != nil {
		return c, lim, fmt.Errorf("-f: %v", err)
	}
	if lim.MaxUse, err = parseDiskLimit(*maxUse); err != nil {
		return c, lim, fmt.Errorf("-x: %v", err)
	}
	switch *scope {
	case "pod":
	case "all":
		lim.AllScope = true
	default:
		return c, lim, fmt.Errorf("-s: %q is neither pod nor all", *scope)
	}
	if *mode < dumpUnknown || *mode > dumpRoot {
		return c, lim, fmt.Errorf("-d: %d is not a dump mode (1 or 2)", *mode)
	}
	lim.DumpMode = *mode
	if *seconds < 1 {
		return c, lim, fmt.Errorf("-t: must be at least 1 second")
	}
	lim.Deadline = time.Duration(*seconds) * time.Second
	rest := flags.Args()
	// %e comes last: before Linux 5.3 the kernel split expanded values on spaces, so a comm with
	// spaces arrives as several arguments that are joined back.
	if len(rest) < 8 {
		return c, lim, fmt.Errorf("expected DIR %%P %%u %%g %%s %%t %%h %%e, got %d arguments", len(rest))
	}
	c.Dir, c.Hostname, c.Comm = rest[0], rest[6], strings.Join(rest[7:], " ")
	if !strings.HasPrefix(c.Dir, "/") {
		return c, lim, fmt.Errorf("DIR %q is not an absolute path", c.Dir)
	}
	numbers := []struct {
		name string
		text string
		bits int
	}{{"%P", rest[1], 31}, {"%u", rest[2], 32}, {"%g", rest[3], 32}, {"%s", rest[4], 31}, {"%t", rest[5], 63}}
	var values [5]uint64
	for i, n := range numbers {
		if values[i], err = strconv.ParseUint(n.text, 10, n.bits); err != nil {
			return c, lim, fmt.Errorf("%s is not a number: %q", n.name, n.text)
		}
	}
	if values[0] == 0 {
		return c, lim, fmt.Errorf("%%P must be a process id, got 0")
	}
	c.GlobalPID, c.UID, c.GID = int(values[0]), uint32(values[1]), uint32(values[2])
	c.Signal, c.Time = int(values[3]), int64(values[4])
	return c, lim, nil
}

func main() {
	guardStandardFds()
	if len(os.Args) == 2 && (os.Args[1] == "--version" || os.Args[1] == "-version") {
		fmt.Println("coredump-receive", version)
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "serve" { // the coredump socket server: socketserve.go
		os.Exit(serveMain(os.Args[2:]))
	}
	c, lim, err := parseArgs(os.Args[1:])
	if err != nil {
		logf("bad arguments (%v); usage: coredump-receive [-d MODE] [-m SIZE] [-f FREE] [-x MAXUSE] [-s pod|all] [-t SECONDS] [-a WINDOW] DIR %%P %%u %%g %%s %%t %%h %%e", err)
		os.Exit(exitUsage)
	}
	dropIfOrphaned(c) // -a (alive.go): no shipper alive, nothing stored
	proc := readProc(c.GlobalPID)
	stdin, err := pollableStdin()
	if err != nil {
		logf("pid %d: standard input: %v", c.GlobalPID, err)
		os.Exit(exitFailed)
	}
	c.Capture = capturePipe
	result, err := receive(c, lim, proc, stdin)
	if err != nil {
		logf("pid %d (%s): core not stored: %v%s", c.GlobalPID, c.Comm, err, result.RecordError)
		os.Exit(exitFailed)
	}
	switch {
	case result.Dropped != "":
		logf("pid %d (%s, uid %d): core not stored: %s%s", c.GlobalPID, c.Comm, c.UID, result.Dropped, result.RecordError)
	case result.Truncated != "":
		logf("pid %d (%s): core cut short at %d bytes (%s): stored as %s%s", c.GlobalPID, c.Comm, result.Size, result.Truncated, result.Name, result.RecordError)
	}
}

// pollableStdin makes the pipe non-blocking so that reads honour the deadline in Go's poller.
func pollableStdin() (*os.File, error) {
	if err := syscall.SetNonblock(0, true); err != nil {
		return nil, err
	}
	file := os.NewFile(0, "stdin")
	if file == nil {
		return nil, errors.New("no standard input")
	}
	return file, nil
}
