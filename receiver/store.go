package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

const (
	chunkSize   = 1 << 20 // one read buffer, allocated once
	holeBlock   = 4096    // all-zero blocks of this size are skipped, leaving holes (cores are sparse)
	factsSpace  = 8192    // reserved before the core is read, so a full disk still gets its facts
	procLimit   = 64 << 10
	valueLimit  = 512 // longest exe path or cgroup path kept in the facts
	nameTries   = 16
	renameNoRep = 1 // RENAME_NOREPLACE
	factsFormat = 1
)

// procFacts is what /proc/<pid> says while the dumping process still exists (core_pipe_limit > 0).
type procFacts struct {
	pod podIdentity
	pid int    // pid in the process's own namespace (NSpid), 0 if unknown
	exe string // /proc/<pid>/exe
}

// facts is the sidecar ".<core>.crash.json", read by the shipper as untrusted input.
type facts struct {
	Format          int    `json:"format"`
	Receiver        string `json:"receiver"`
	Inode           uint64 `json:"inode"`
	Size            int64  `json:"size"`
	Truncated       bool   `json:"truncated"`
	TruncatedReason string `json:"truncated_reason,omitempty"`
	GlobalPID       int    `json:"global_pid"`
	PID             int    `json:"pid,omitempty"`
	UID             uint32 `json:"uid"`
	GID             uint32 `json:"gid"`
	Signal          int    `json:"signal"`
	Time            int64  `json:"time"`
	Hostname        string `json:"hostname"`
	Comm            string `json:"comm"`
	ExePath         string `json:"exe_path,omitempty"`
	Cgroup          string `json:"cgroup,omitempty"`
	PodUID          string `json:"pod_uid,omitempty"`
	ContainerID     string `json:"container_id,omitempty"`
	DumpMode        int    `json:"dump_mode,omitempty"`
	Capture         string `json:"capture,omitempty"`
}

type stored struct {
	Name        string
	Size        int64
	Truncated   string // why the core was cut short, "" if it was not
	Dropped     string // why no core was stored (scope, suid-safe policy), "" if one was
	RecordError string // "; failure not recorded: ..." when the spool record could not be written
	record      string // the reason in the failure record, "" when nothing was lost
}

func readBounded(path string) string {
	file, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer file.Close()
	data, _ := io.ReadAll(io.LimitReader(file, procLimit))
	return string(data)
}

func readProc(pid int) procFacts {
	base := "/proc/" + strconv.Itoa(pid)
	var p procFacts
	p.pod = parseCgroup(readBounded(base + "/cgroup"))
	for _, line := range strings.Split(readBounded(base+"/status"), "\n") {
		if strings.HasPrefix(line, "NSpid:") {
			fields := strings.Fields(line[len("NSpid:"):]) // outermost first: the last one is the pod's own view
			if len(fields) > 0 {
				p.pid, _ = strconv.Atoi(fields[len(fields)-1])
			}
		}
	}
	p.exe, _ = os.Readlink(base + "/exe")
	return p
}

// safeName keeps a hostile %h or %e usable in a file name: bytes other than [A-Za-z0-9._+-]
// become '_' and the value is cut to limit bytes (the facts keep the real value).
func safeName(value string, limit int) string {
	out := []byte(value)
	if len(out) > limit {
		out = out[:limit]
	}
	for i, c := range out {
		ok := ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') || strings.IndexByte("._+-", c) >= 0
		if !ok {
			out[i] = '_'
		}
	}
	if len(out) == 0 {
		return "_"
	}
	return string(out)
}

func cut(value string, limit int) string {
	if len(value) > limit {
		return value[:limit]
	}
	return value
}

// createTemp makes a new dot-file (ignored by the shipper) that cannot be a planted link or FIFO:
// O_EXCL fails on any existing entry and O_NOFOLLOW never follows one.
func createTemp(dirfd int, pid int, kind string) (string, int, error) {
	flags := syscall.O_WRONLY | syscall.O_CREAT | syscall.O_EXCL | syscall.O_NOFOLLOW | syscall.O_CLOEXEC
	for try := 0; try < nameTries; try++ {
		name := fmt.Sprintf(".coredump-receive.%d.%s.tmp", pid, kind)
		if try > 0 {
			name = fmt.Sprintf(".coredump-receive.%d.%x.%s.tmp", pid, time.Now().UnixNano()+int64(try), kind)
		}
		fd, err := syscall.Openat(dirfd, name, flags, 0o600)
		if err == nil {
			return name, fd, nil
		}
		if err != syscall.EEXIST {
			return "", -1, fmt.Errorf("create %s: %v", name, err)
		}
	}
	return "", -1, errors.New("no free temporary name")
}

func renameNoReplace(dirfd int, from, to string) error {
	oldp, err := syscall.BytePtrFromString(from)
	if err != nil {
		return err
	}
	newp, err := syscall.BytePtrFromString(to)
	if err != nil {
		return err
	}
	_, _, errno := syscall.Syscall6(sysRenameat2, uintptr(dirfd), uintptr(unsafe.Pointer(oldp)),
		uintptr(dirfd), uintptr(unsafe.Pointer(newp)), renameNoRep, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// zero is compared against, never written: all-zero blocks become holes.
var zero = make([]byte, holeBlock)

// writeSparse writes the non-zero blocks of chunk at offset; returns how far the file now reaches
// and why it stopped early ("" if it did not).
func writeSparse(fd int, chunk []byte, offset int64, guard *spaceGuard) (int, string) {
	done := 0
	for done < len(chunk) {
		end := done + holeBlock
		if end > len(chunk) {
			end = len(chunk)
		}
		if bytes.Equal(chunk[done:end], zero[:end-done]) {
			done = end
			continue
		}
		run := end // extend the run of non-zero blocks
		for run < len(chunk) {
			next := run + holeBlock
			if next > len(chunk) {
				next = len(chunk)
			}
			if bytes.Equal(chunk[run:next], zero[:next-run]) {
				break
			}
			run = next
		}
		if reason := guard.allow(int64(run - done)); reason != "" {
			return done, reason
		}
		n, err := syscall.Pwrite(fd, chunk[done:run], offset+int64(done))
		if n > 0 {
			done += n
		}
		if err == syscall.ENOSPC || err == syscall.EDQUOT {
			return done, "no-space"
		}
		if err != nil {
			// EIO, EFBIG...: what reached the file is kept and shipped marked cut short.
			return done, "write-error"
		}
	}
	return done, ""
}

// stream copies the core from in to fd; returns its size and why it was cut short ("" if not).
func stream(dirfd, fd int, in *os.File, lim limits) (int64, string) {
	_ = in.SetReadDeadline(time.Now().Add(lim.Deadline))
	guard := &spaceGuard{dirfd: dirfd, fd: fd, lim: lim}
	buf := make([]byte, chunkSize)
	var size int64
	for {
		n, readErr := in.Read(buf)
		chunk := buf[:n]
		capped := false
		if lim.MaxSize > 0 && size+int64(n) > lim.MaxSize {
			chunk, capped = chunk[:lim.MaxSize-size], true
		}
		written, reason := writeSparse(fd, chunk, size, guard)
		size += int64(written)
		switch {
		case reason != "":
			return size, reason
		case capped:
			return size, "max-size"
		case readErr == io.EOF:
			return size, ""
		case errors.Is(readErr, os.ErrDeadlineExceeded):
			return size, "deadline"
		case readErr != nil:
			return size, "read-error"
		}
	}
}

// dropReason says why a core must not be stored at all ("" to store it), and the record's reason.
func dropReason(c crash, lim limits, proc procFacts, owner uint32) (string, string) {
	if !lim.AllScope && proc.pod.PodUID == "" {
		return "the process is not in a Kubernetes pod (capture scope pod; cgroup " + strconv.Quote(cut(proc.pod.Cgroup, 128)) + ")", "scope"
	}
	// The kernel's own rule for a suid-safe file dump is "owned by root": the dump may hold memory
	// of the privileged part of the process (keys read before a setuid drop). Here it goes to the
	// shipper's uid, read-only; never when that uid is the one that crashed (a host user sharing the
	// shipper's uid who crashes a setuid program would read root's secrets).
	if lim.DumpMode != dumpUser && owner == c.UID && owner != 0 {
		return fmt.Sprintf("suid-safe dump (mode %d) of uid %d, the core directory's owner", lim.DumpMode, c.UID), "suid-owner"
	}
	return "", ""
}

func receive(c crash, lim limits, proc procFacts, in *os.File) (result stored, err error) {
	dirfd, err := syscall.Open(c.Dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return result, fmt.Errorf("open %s: %v", c.Dir, err)
	}
	defer syscall.Close(dirfd)
	var dir syscall.Stat_t
	if err := syscall.Fstat(dirfd, &dir); err != nil {
		return result, fmt.Errorf("stat %s: %v", c.Dir, err)
	}
	// Every core lost or cut short leaves a record for the shipper's capture_failures_total.
	defer func() {
		reason := result.record
		if err != nil {
			reason = "not-stored"
		}
		if reason == "" {
			return
		}
		record := failure{Reason: reason, Time: c.Time, GlobalPID: c.GlobalPID, Comm: cut(c.Comm, 64), PodUID: proc.pod.PodUID, Size: result.Size}
		if recordErr := recordFailure(dirfd, dir, record); recordErr != nil {
			result.RecordError = "; failure not recorded: " + recordErr.Error()
		}
	}()
	if why, reason := dropReason(c, lim, proc, dir.Uid); why != "" {
		result.Dropped, result.record = why, reason
		return result, nil
	}
	// Until both renames succeed, every file made here is removed again on the way out.
	var temps []string
	defer func() {
		for _, name := range temps {
			syscall.Unlinkat(dirfd, name)
		}
	}()
	coreTmp, coreFd, err := createTemp(dirfd, c.GlobalPID, "core")
	if err != nil {
		return result, err
	}
	temps = append(temps, coreTmp)
	defer syscall.Close(coreFd)
	factsTmp, factsFd, err := createTemp(dirfd, c.GlobalPID, "crash")
	if err != nil {
		return result, err
	}
	temps = append(temps, factsTmp)
	defer syscall.Close(factsFd)
	if _, err := syscall.Pwrite(factsFd, bytes.Repeat([]byte{' '}, factsSpace), 0); err != nil {
		return result, fmt.Errorf("reserve facts: %v", err)
	}

	size, reason := stream(dirfd, coreFd, in, lim)
	result.Size, result.Truncated, result.record = size, reason, reason
	// An ordinary core stays writable by its owner like the kernel's own; a suid-safe one (or one
	// whose mode the line did not say) is read-only: the shipper reads and unlinks, nothing more.
	mode := uint32(0o400)
	if lim.DumpMode == dumpUser {
		mode = 0o600
	}
	var st syscall.Stat_t
	for _, step := range []func() error{
		func() error { return syscall.Ftruncate(coreFd, size) }, // trailing holes
		func() error { return syscall.Fchown(coreFd, int(dir.Uid), int(dir.Gid)) },
		func() error { return syscall.Fchmod(coreFd, mode) },
		func() error { return syscall.Fstat(coreFd, &st) },
	} {
		if err := step(); err != nil {
			return result, fmt.Errorf("finish core: %v", err)
		}
	}
	record := facts{
		Format: factsFormat, Receiver: version, Inode: st.Ino, Size: size,
		Truncated: reason != "", TruncatedReason: reason,
		GlobalPID: c.GlobalPID, PID: proc.pid, UID: c.UID, GID: c.GID, Signal: c.Signal, Time: c.Time,
		Hostname: cut(c.Hostname, 64), Comm: cut(c.Comm, 64), ExePath: cut(proc.exe, valueLimit),
		Cgroup: cut(proc.pod.Cgroup, valueLimit), PodUID: proc.pod.PodUID, ContainerID: proc.pod.ContainerID,
		DumpMode: lim.DumpMode, Capture: c.Capture,
	}
	var text bytes.Buffer
	encoder := json.NewEncoder(&text)
	encoder.SetEscapeHTML(false)
	if err := encoder.Encode(record); err != nil || text.Len() > factsSpace {
		return result, fmt.Errorf("encode facts: %v", err)
	}
	for _, step := range []func() error{
		func() error { _, err := syscall.Pwrite(factsFd, text.Bytes(), 0); return err },
		func() error { return syscall.Ftruncate(factsFd, int64(text.Len())) },
		func() error { return syscall.Fchown(factsFd, int(dir.Uid), int(dir.Gid)) },
		func() error { return syscall.Fchmod(factsFd, 0o600) },
	} {
		if err := step(); err != nil {
			return result, fmt.Errorf("write facts: %v", err)
		}
	}

	// The facts go in first, then the core: whoever sees the core finds its facts complete. A name
	// taken by anything (a planted link, a FIFO, an older core) is never replaced: the next is tried.
	base := fmt.Sprintf("core.%s.%s.sig%d.%d.%d", safeName(c.Hostname, 64), safeName(c.Comm, 15), c.Signal, c.GlobalPID, c.Time)
	factsAt := factsTmp
	for try := 0; try < nameTries; try++ {
		name := base
		if try > 0 {
			name = fmt.Sprintf("%s.%d", base, try)
		}
		sidecar := "." + name + ".crash.json"
		if err := renameNoReplace(dirfd, factsAt, sidecar); err == syscall.EEXIST {
			continue
		} else if err != nil {
			return result, fmt.Errorf("rename facts: %v", err)
		}
		factsAt = sidecar
		temps[1] = sidecar
		if err := renameNoReplace(dirfd, coreTmp, name); err == syscall.EEXIST {
			continue
		} else if err != nil {
			return result, fmt.Errorf("rename core: %v", err)
		}
		temps = nil
		result.Name = name
		return result, nil
	}
	return result, errors.New("no free core name")
}
