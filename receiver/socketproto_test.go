package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unsafe"
)

// The offsets below are the kernel's (include/uapi/linux/pidfd.h, struct pidfd_info, all fields
// naturally aligned, no padding): a Go field out of place would read another field's value.
func TestPidfdInfoLayoutMatchesKernel(t *testing.T) {
	var info pidfdInfo
	if size := unsafe.Sizeof(info); size != 72 || pidfdInfoSizeVer1 != 72 {
		t.Fatalf("sizeof(pidfd_info) = %d, kernel's PIDFD_INFO_SIZE_VER1 is 72", size)
	}
	offsets := []struct {
		name   string
		got    uintptr
		kernel uintptr
	}{
		{"mask", unsafe.Offsetof(info.Mask), 0},
		{"cgroupid", unsafe.Offsetof(info.CgroupID), 8},
		{"pid", unsafe.Offsetof(info.PID), 16},
		{"tgid", unsafe.Offsetof(info.TGID), 20},
		{"ppid", unsafe.Offsetof(info.PPID), 24},
		{"ruid", unsafe.Offsetof(info.RUID), 28},
		{"rgid", unsafe.Offsetof(info.RGID), 32},
		{"euid", unsafe.Offsetof(info.EUID), 36},
		{"egid", unsafe.Offsetof(info.EGID), 40},
		{"suid", unsafe.Offsetof(info.SUID), 44},
		{"sgid", unsafe.Offsetof(info.SGID), 48},
		{"fsuid", unsafe.Offsetof(info.FSUID), 52},
		{"fsgid", unsafe.Offsetof(info.FSGID), 56},
		{"exit_code", unsafe.Offsetof(info.ExitCode), 60},
		{"coredump_mask", unsafe.Offsetof(info.CoredumpMask), 64},
		{"coredump_signal", unsafe.Offsetof(info.CoredumpSignal), 68},
	}
	for _, o := range offsets {
		if o.got != o.kernel {
			t.Errorf("offsetof(%s) = %d, kernel: %d", o.name, o.got, o.kernel)
		}
	}
	// _IOWR(0xFF, 11, struct pidfd_info) with the 72-byte struct, as the C macro computes it.
	if pidfdGetInfo != 0xC048FF0B {
		t.Errorf("PIDFD_GET_INFO = %#x, want 0xc048ff0b", pidfdGetInfo)
	}
	if pidfdGetUTSNamespace != 0xFF0A {
		t.Errorf("PIDFD_GET_UTS_NAMESPACE = %#x, want 0xff0a", pidfdGetUTSNamespace)
	}
}

func TestCoredumpStructsMatchKernel(t *testing.T) {
	if unsafe.Sizeof(coredumpReq{}) != coredumpReqSizeVer0 || unsafe.Sizeof(coredumpAck{}) != coredumpAckSizeVer0 {
		t.Fatalf("sizes %d/%d, kernel's COREDUMP_{REQ,ACK}_SIZE_VER0 are 16", unsafe.Sizeof(coredumpReq{}), unsafe.Sizeof(coredumpAck{}))
	}
	var req coredumpReq
	var ack coredumpAck
	for _, o := range []struct {
		name        string
		got, kernel uintptr
	}{
		{"req.size", unsafe.Offsetof(req.Size), 0}, {"req.size_ack", unsafe.Offsetof(req.SizeAck), 4},
		{"req.mask", unsafe.Offsetof(req.Mask), 8}, {"ack.size", unsafe.Offsetof(ack.Size), 0},
		{"ack.spare", unsafe.Offsetof(ack.Spare), 4}, {"ack.mask", unsafe.Offsetof(ack.Mask), 8},
	} {
		if o.got != o.kernel {
			t.Errorf("offsetof(%s) = %d, kernel: %d", o.name, o.got, o.kernel)
		}
	}
	if coredumpKernel != 1 || coredumpUserspace != 2 || coredumpReject != 4 || coredumpWait != 8 {
		t.Error("COREDUMP_* bits differ from the kernel's")
	}
	encoded := coredumpAck{Size: 16, Mask: coredumpKernel | coredumpWait}.encode()
	want := []byte{16, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0}
	if !bytes.Equal(encoded, want) {
		t.Errorf("ack encodes as % x, want % x", encoded, want)
	}
}

func request(size, sizeAck uint32, mask uint64, extra int) []byte {
	b := make([]byte, 16+extra)
	binary.LittleEndian.PutUint32(b[0:], size)
	binary.LittleEndian.PutUint32(b[4:], sizeAck)
	binary.LittleEndian.PutUint64(b[8:], mask)
	return b
}

const offered = coredumpKernel | coredumpUserspace | coredumpReject | coredumpWait

func TestReadRequest(t *testing.T) {
	// A later kernel's longer request: the tail is consumed, so the next read is the core itself.
	stream := append(request(40, 24, offered|1<<4, 24), []byte("\x7fELF")...)
	r := bytes.NewReader(stream)
	req, err := readRequest(r)
	if err != nil || req != (coredumpReq{Size: 40, SizeAck: 24, Mask: offered | 1<<4}) {
		t.Fatalf("readRequest = %+v, %v", req, err)
	}
	if rest := make([]byte, 4); r.Len() != 4 {
		t.Fatalf("%d bytes left after the request, want the 4 of the core (%q)", r.Len(), rest)
	}
	for _, bad := range [][]byte{request(8, 16, offered, 0), request(1<<20, 16, offered, 0), request(16, 16, offered, 0)[:10]} {
		if _, err := readRequest(bytes.NewReader(bad)); err == nil {
			t.Errorf("readRequest(% x) accepted", bad)
		}
	}
}

func TestAnswerNegotiatesOnlyWhatTheKernelOffers(t *testing.T) {
	req := coredumpReq{Size: 16, SizeAck: 16, Mask: offered}
	if ack, err := answer(req, true); err != nil || ack.Mask != coredumpKernel|coredumpWait || ack.Size != 16 {
		t.Errorf("accept: %+v, %v", ack, err)
	}
	if ack, err := answer(req, false); err != nil || ack.Mask != coredumpReject {
		t.Errorf("reject: %+v, %v", ack, err)
	}
	if _, err := answer(coredumpReq{Size: 16, SizeAck: 16, Mask: coredumpKernel}, true); err == nil {
		t.Error("asked for COREDUMP_WAIT, which the kernel did not offer")
	}
	if _, err := answer(coredumpReq{Size: 16, SizeAck: 8, Mask: offered}, true); err == nil {
		t.Error("sent an ack longer than the kernel reads")
	}
}

func TestReadMark(t *testing.T) {
	if err := readMark(bytes.NewReader([]byte{0, 0, 0, 0})); err != nil {
		t.Errorf("REQACK: %v", err)
	}
	err := readMark(bytes.NewReader([]byte{4, 0, 0, 0}))
	if !errors.Is(err, errMark) || !strings.Contains(err.Error(), "conflicting") {
		t.Errorf("CONFLICTING: %v", err)
	}
}

func TestDumpMode(t *testing.T) {
	cases := []struct {
		info pidfdInfo
		want int
	}{
		{pidfdInfo{}, -1},
		{pidfdInfo{Mask: pidfdInfoCoredump, CoredumpMask: pidfdCoredumped | pidfdCoredumpUser}, 1},
		{pidfdInfo{Mask: pidfdInfoCoredump, CoredumpMask: pidfdCoredumped | pidfdCoredumpRoot}, 2},
		{pidfdInfo{Mask: pidfdInfoCoredump, CoredumpMask: pidfdCoredumpSkip}, 0},
	}
	for _, c := range cases {
		if got := c.info.dumpMode(); got != c.want {
			t.Errorf("%+v: dump mode %d, want %d", c.info, got, c.want)
		}
	}
}

// The real kernel: this test process's own pidfd, and a cgroup made for the purpose.
func TestPidfdInfoAndCgroupPathOnThisKernel(t *testing.T) {
	pidfd, _, errno := syscall.Syscall(434 /* pidfd_open, same number on amd64 and arm64 */, uintptr(os.Getpid()), 0, 0)
	if errno != 0 {
		t.Skipf("pidfd_open: %v", errno)
	}
	defer syscall.Close(int(pidfd))
	info, err := getPidfdInfo(int(pidfd), infoWanted)
	if err != nil {
		t.Skipf("kernel without PIDFD_GET_INFO: %v", err)
	}
	if int(info.TGID) != os.Getpid() || info.RUID != uint32(os.Getuid()) || info.RGID != uint32(os.Getgid()) {
		t.Fatalf("pidfd info %+v does not describe this process", info)
	}
	if os.Geteuid() != 0 {
		t.Skip("open_by_handle_at needs root")
	}
	root := findCgroup2("/sys/fs/cgroup")
	dir := filepath.Join(root, fmt.Sprintf("cds-socket-test-%d.slice", os.Getpid()), "kubepods-burstable-pod"+uidU+".slice", "cri-containerd-"+cid+".scope")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Skipf("cannot make a cgroup: %v", err)
	}
	defer func() {
		for d := dir; d != root; d = filepath.Dir(d) {
			os.Remove(d)
		}
	}()
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	path, err := cgroupPath(root, st.Ino) // on cgroup2 the cgroup id is the directory's inode
	if err != nil {
		t.Fatalf("cgroupPath: %v", err)
	}
	if want := strings.TrimPrefix(dir, root); path != want {
		t.Fatalf("cgroupPath = %q, want %q", path, want)
	}
	if pod, container := podFromPath(path); pod != uid || container != cid {
		t.Fatalf("pod %q container %q from %q", pod, container, path)
	}
	if _, err := cgroupPath(root, 1<<62); err == nil {
		t.Error("an unknown cgroup id resolved")
	}
}
