package main

// Who is crashing, from the connection alone: the kernel connects as the crashing task, so
// SO_PEERPIDFD gives its pidfd, and PIDFD_GET_INFO its pid, credentials, cgroup id and dump mode,
// all before the server accepts or rejects the core.

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"
)

const (
	soPeerPidfd          = 77           // SO_PEERPIDFD (Linux 6.5)
	pidfdGetUTSNamespace = 0xFF<<8 | 10 // _IO(PIDFS_IOCTL_MAGIC, 10)
	fileidKernfs         = 0xfe         // file handle type of a kernfs (cgroup2) node: its 64-bit id
	cloneNewUTS          = 0x04000000
	infoWanted           = pidfdInfoPID | pidfdInfoCreds | pidfdInfoCgroupID | pidfdInfoCoredump
)

// peer is what the server knows about a crash before it answers the kernel.
type peer struct {
	info     pidfdInfo
	pid      int // in the server's pid namespace: the host's, as the chart runs it (hostPID)
	uid      uint32
	gid      uint32
	signal   int
	comm     string
	hostname string
	dumpMode int // %d: 1 as the user, 2 as root (suid_dumpable=2), -1 unknown
	proc     procFacts
}

func peerPidfd(conn int) (int, error) {
	fd, err := syscall.GetsockoptInt(conn, syscall.SOL_SOCKET, soPeerPidfd)
	if err != nil {
		return -1, fmt.Errorf("SO_PEERPIDFD: %v", err)
	}
	return fd, nil
}

func getPidfdInfo(pidfd int, mask uint64) (pidfdInfo, error) {
	info := pidfdInfo{Mask: mask}
	_, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(pidfd), pidfdGetInfo, uintptr(unsafe.Pointer(&info)))
	if errno != 0 {
		return info, fmt.Errorf("PIDFD_GET_INFO: %v", errno)
	}
	return info, nil
}

// identify collects the peer's facts. Only the pidfd is authoritative: what /proc says is kept only
// if the pidfd still names the same live task afterwards (a crashing task cannot be reaped while
// the kernel waits for our ack, so this holds unless something is badly wrong).
func identify(pidfd int, cgroupRoot string) (peer, error) {
	info, err := getPidfdInfo(pidfd, infoWanted)
	if err != nil {
		return peer{}, err
	}
	p := peer{info: info, pid: int(info.TGID), uid: info.RUID, gid: info.RGID, dumpMode: info.dumpMode()}
	if info.Mask&pidfdInfoCoredumpSignal != 0 {
		p.signal = int(info.CoredumpSignal)
	}
	if p.pid > 0 {
		p.proc = readProc(p.pid)
		p.comm = strings.TrimSuffix(readBounded("/proc/"+strconv.Itoa(p.pid)+"/comm"), "\n")
		if p.signal == 0 {
			p.signal = dumpSignal(p.pid)
		}
	}
	if info.Mask&pidfdInfoCgroupID != 0 {
		// On hybrid (v1 + v2) hosts the unified cgroup may name no pod while a v1 line in /proc
		// does: the cgroup id wins only when it names a pod or /proc named none.
		if path, err := cgroupPath(cgroupRoot, info.CgroupID); err == nil {
			if uid, cid := podFromPath(path); uid != "" || p.proc.pod.PodUID == "" {
				p.proc.pod = podIdentity{Cgroup: path, PodUID: uid, ContainerID: cid}
			}
		}
	}
	p.hostname, _ = utsHostname(pidfd)
	if again, err := getPidfdInfo(pidfd, pidfdInfoPID); err != nil || again.TGID != info.TGID {
		p.proc, p.comm = procFacts{pod: p.proc.pod}, ""
	}
	if p.comm == "" {
		p.comm = "unknown"
	}
	return p, nil
}

// dumpSignal reads the signal of a task that is dumping core: the kernel has set its group exit
// code (/proc/<pid>/stat field 52) to the signal, with 0x80 for "core dumped" not yet added.
func dumpSignal(pid int) int {
	stat := readBounded("/proc/" + strconv.Itoa(pid) + "/stat")
	end := strings.LastIndexByte(stat, ')')
	if end < 0 {
		return 0
	}
	fields := strings.Fields(stat[end+1:]) // field 3 (state) onwards
	if len(fields) < 50 {
		return 0
	}
	code, err := strconv.Atoi(fields[49])
	if err != nil {
		return 0
	}
	return code & 0x7f
}

// cgroupPath turns a cgroup2 id into its path below the hierarchy's root, the way systemd does:
// a kernfs file handle opened relative to the mounted root (needs CAP_DAC_READ_SEARCH).
func cgroupPath(root string, id uint64) (string, error) {
	rootfd, err := syscall.Open(root, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer syscall.Close(rootfd)
	var handle [16]byte
	binary.LittleEndian.PutUint32(handle[0:4], 8)
	binary.LittleEndian.PutUint32(handle[4:8], fileidKernfs)
	binary.LittleEndian.PutUint64(handle[8:16], id)
	fd, _, errno := syscall.Syscall(sysOpenByHandleAt, uintptr(rootfd), uintptr(unsafe.Pointer(&handle[0])),
		syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC)
	if errno != 0 {
		return "", fmt.Errorf("open_by_handle_at: %v", errno)
	}
	defer syscall.Close(int(fd))
	where, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(fd)))
	if err != nil {
		return "", err
	}
	top, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(rootfd))
	if err != nil {
		return "", err
	}
	rel := strings.TrimPrefix(where, strings.TrimSuffix(top, "/"))
	if rel == where && top != "/" {
		return "", fmt.Errorf("cgroup %d is outside %s", id, top)
	}
	if rel == "" {
		rel = "/"
	}
	return rel, nil
}

// utsHostname is %h: the hostname in the crashing task's UTS namespace (a pod's name). It enters
// that namespace on a thread of its own and comes back; a thread that could not come back is never
// handed back to the Go scheduler (it ends with its goroutine).
func utsHostname(pidfd int) (string, error) {
	nsfd, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(pidfd), pidfdGetUTSNamespace, 0)
	if errno != 0 {
		return "", fmt.Errorf("PIDFD_GET_UTS_NAMESPACE: %v", errno)
	}
	defer syscall.Close(int(nsfd))
	runtime.LockOSThread()
	own, err := syscall.Open("/proc/thread-self/ns/uts", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return "", err
	}
	defer syscall.Close(own)
	if _, _, errno := syscall.Syscall(sysSetns, nsfd, cloneNewUTS, 0); errno != 0 {
		runtime.UnlockOSThread()
		return "", fmt.Errorf("setns: %v", errno)
	}
	var uts syscall.Utsname
	unameErr := syscall.Uname(&uts)
	if _, _, errno := syscall.Syscall(sysSetns, uintptr(own), cloneNewUTS, 0); errno == 0 {
		runtime.UnlockOSThread()
	}
	if unameErr != nil {
		return "", unameErr
	}
	name := make([]byte, 0, len(uts.Nodename))
	for _, c := range uts.Nodename {
		if c == 0 {
			break
		}
		name = append(name, byte(c))
	}
	return string(name), nil
}
