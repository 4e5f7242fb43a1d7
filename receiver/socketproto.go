package main

// The kernel's coredump socket protocol (core_pattern "@@/path", Linux 6.17+), as defined in the
// kernel's include/uapi/linux/coredump.h and include/uapi/linux/pidfd.h. The build hosts' headers
// (Debian 12) predate both, so the layouts are written out here and checked by socketproto_test.go.
//
// One crash, one connection: the kernel connects (as the crashing task: SO_PEERPIDFD names it),
// sends a coredump_req, reads a coredump_ack, answers with a 4-byte mark, and then, if the ack asked
// for COREDUMP_KERNEL, writes the core and shuts down its side. With COREDUMP_WAIT it then blocks
// until the server closes the connection.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// coredump_{req,ack} mask bits.
const (
	coredumpKernel    uint64 = 1 << 0 // the kernel writes the core into the socket
	coredumpUserspace uint64 = 1 << 1 // the server writes the core itself (not used here)
	coredumpReject    uint64 = 1 << 2 // no core at all
	coredumpWait      uint64 = 1 << 3 // the task stays until the server closes the connection
)

const (
	coredumpReqSizeVer0 = 16
	coredumpAckSizeVer0 = 16
	// A request larger than this is not a kernel's: no version of the struct comes close.
	coredumpReqSizeMax = 4096
)

// enum coredump_mark: what the kernel answers to an ack (a __u32).
const (
	markReqAck      uint32 = 0
	markMinSize     uint32 = 1
	markMaxSize     uint32 = 2
	markUnsupported uint32 = 3
	markConflicting uint32 = 4
)

// coredumpReq is struct coredump_req (version 0; later kernels may send more, which is skipped).
type coredumpReq struct {
	Size    uint32 // of the request the kernel sent
	SizeAck uint32 // the largest coredump_ack this kernel reads
	Mask    uint64 // what the kernel offers
}

// coredumpAck is struct coredump_ack (version 0).
type coredumpAck struct {
	Size  uint32
	Spare uint32 // must be zero
	Mask  uint64
}

// readRequest reads one coredump_req: its size first, then the rest, of which only the fields known
// here are kept.
func readRequest(r io.Reader) (coredumpReq, error) {
	var req coredumpReq
	head := make([]byte, coredumpReqSizeVer0)
	if _, err := io.ReadFull(r, head[:4]); err != nil {
		return req, fmt.Errorf("read request size: %w", err)
	}
	size := binary.LittleEndian.Uint32(head[:4])
	if size < coredumpReqSizeVer0 || size > coredumpReqSizeMax {
		return req, fmt.Errorf("request size %d out of range", size)
	}
	if _, err := io.ReadFull(r, head[4:]); err != nil {
		return req, fmt.Errorf("read request: %w", err)
	}
	if extra := int64(size) - coredumpReqSizeVer0; extra > 0 {
		if _, err := io.CopyN(io.Discard, r, extra); err != nil {
			return req, fmt.Errorf("read request tail: %w", err)
		}
	}
	return decodeRequest(head), nil
}

func decodeRequest(b []byte) coredumpReq {
	return coredumpReq{
		Size:    binary.LittleEndian.Uint32(b[0:4]),
		SizeAck: binary.LittleEndian.Uint32(b[4:8]),
		Mask:    binary.LittleEndian.Uint64(b[8:16]),
	}
}

func (a coredumpAck) encode() []byte {
	b := make([]byte, coredumpAckSizeVer0)
	binary.LittleEndian.PutUint32(b[0:4], a.Size)
	binary.LittleEndian.PutUint32(b[4:8], a.Spare)
	binary.LittleEndian.PutUint64(b[8:16], a.Mask)
	return b
}

// answer picks the ack for a request: the kernel refuses (and drops the core) when the ack asks for
// a bit it did not offer, or is longer than it reads, so both are checked here first.
func answer(req coredumpReq, accept bool) (coredumpAck, error) {
	if req.SizeAck < coredumpAckSizeVer0 {
		return coredumpAck{}, fmt.Errorf("kernel reads acks of %d bytes, fewer than %d", req.SizeAck, coredumpAckSizeVer0)
	}
	want := coredumpReject
	if accept {
		want = coredumpKernel | coredumpWait
	}
	if req.Mask&want != want {
		return coredumpAck{}, fmt.Errorf("kernel offers mask %#x, need %#x", req.Mask, want)
	}
	return coredumpAck{Size: coredumpAckSizeVer0, Mask: want}, nil
}

var errMark = errors.New("kernel refused the ack")

// readMark reads the kernel's verdict on the ack.
func readMark(r io.Reader) error {
	b := make([]byte, 4)
	if _, err := io.ReadFull(r, b); err != nil {
		return fmt.Errorf("read mark: %w", err)
	}
	if mark := binary.LittleEndian.Uint32(b); mark != markReqAck {
		names := map[uint32]string{markMinSize: "ack too small", markMaxSize: "ack too large",
			markUnsupported: "unsupported mask", markConflicting: "conflicting mask"}
		return fmt.Errorf("%w: mark %d (%s)", errMark, mark, names[mark])
	}
	return nil
}

// struct pidfd_info, up to its second published size (PIDFD_INFO_SIZE_VER1, Linux 6.16: the
// coredump fields). The ioctl number carries the size, so a kernel that knows a longer struct
// fills only these 72 bytes.
const (
	pidfdInfoSizeVer1 = 72

	pidfdInfoPID      uint64 = 1 << 0
	pidfdInfoCreds    uint64 = 1 << 1
	pidfdInfoCgroupID uint64 = 1 << 2
	pidfdInfoCoredump uint64 = 1 << 4
	// Set by kernels that fill coredump_signal (the slot was spare in 6.16).
	pidfdInfoCoredumpSignal uint64 = 1 << 6

	// coredump_mask bits
	pidfdCoredumped   uint32 = 1 << 0
	pidfdCoredumpSkip uint32 = 1 << 1
	pidfdCoredumpUser uint32 = 1 << 2 // suid_dumpable 1: dumped as the task's own user
	pidfdCoredumpRoot uint32 = 1 << 3 // suid_dumpable 2: dumped as root, to be kept private
	pidfsIoctlMagic          = 0xFF
	pidfdGetInfoNr           = 11
	iocWrite                 = 1
	iocRead                  = 2
)

// pidfdGetInfo is _IOWR(PIDFS_IOCTL_MAGIC, 11, struct pidfd_info) for the 72-byte struct.
const pidfdGetInfo = (iocRead|iocWrite)<<30 | pidfdInfoSizeVer1<<16 | pidfsIoctlMagic<<8 | pidfdGetInfoNr

// pidfdInfo is struct pidfd_info as far as PIDFD_INFO_SIZE_VER1; field order is the kernel's.
type pidfdInfo struct {
	Mask           uint64
	CgroupID       uint64
	PID            uint32
	TGID           uint32
	PPID           uint32
	RUID           uint32
	RGID           uint32
	EUID           uint32
	EGID           uint32
	SUID           uint32
	SGID           uint32
	FSUID          uint32
	FSGID          uint32
	ExitCode       int32
	CoredumpMask   uint32
	CoredumpSignal uint32 // valid when Mask has pidfdInfoCoredumpSignal
}

// dumpMode is what %d would say: 1 dumped as the user, 2 as root (suid_dumpable=2: keep private).
func (p pidfdInfo) dumpMode() int {
	if p.Mask&pidfdInfoCoredump == 0 {
		return -1
	}
	switch {
	case p.CoredumpMask&pidfdCoredumpRoot != 0:
		return 2
	case p.CoredumpMask&pidfdCoredumpUser != 0:
		return 1
	}
	return 0
}
