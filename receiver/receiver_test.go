package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	uid  = "8d3f2a1c-5b6e-4c7d-9e8f-0a1b2c3d4e5f"
	uidU = "8d3f2a1c_5b6e_4c7d_9e8f_0a1b2c3d4e5f"
	cid  = "4f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0"
)

func TestParseCgroupLayouts(t *testing.T) {
	cases := []struct {
		name, content, pod, container, cgroup string
	}{
		{"v1 cgroupfs burstable (containerd, docker)",
			"12:memory:/kubepods/burstable/pod" + uid + "/" + cid + "\n11:cpu,cpuacct:/kubepods/burstable/pod" + uid + "/" + cid + "\n",
			uid, cid, "/kubepods/burstable/pod" + uid + "/" + cid},
		{"v1 cgroupfs guaranteed (no QoS level)",
			"4:pids:/kubepods/pod" + uid + "/" + cid + "\n", uid, cid, "/kubepods/pod" + uid + "/" + cid},
		{"v1 with the named systemd hierarchy first",
			"1:name=systemd:/kubepods/besteffort/pod" + uid + "/" + cid + "\n0::/\n", uid, cid, "/kubepods/besteffort/pod" + uid + "/" + cid},
		{"v2 systemd driver, containerd",
			"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope\n",
			uid, cid, "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope"},
		{"v2 systemd driver, guaranteed, CRI-O",
			"0::/kubepods.slice/kubepods-pod" + uidU + ".slice/crio-" + cid + ".scope\n", uid, cid,
			"/kubepods.slice/kubepods-pod" + uidU + ".slice/crio-" + cid + ".scope"},
		{"v2 systemd driver, besteffort, Docker (cri-dockerd)",
			"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/docker-" + cid + ".scope\n", uid, cid,
			"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/docker-" + cid + ".scope"},
		{"v2 cgroupfs driver (k3s, kind)",
			"0::/kubepods/burstable/pod" + uid + "/" + cid + "\n", uid, cid, "/kubepods/burstable/pod" + uid + "/" + cid},
		{"containerd's joined slice:runtime:id form",
			"0::/system.slice/containerd.service/kubepods-burstable-pod" + uidU + ".slice:cri-containerd:" + cid + "\n", uid, cid,
			"/system.slice/containerd.service/kubepods-burstable-pod" + uidU + ".slice:cri-containerd:" + cid},
		{"CRI-O conmon is not the container",
			"0::/kubepods.slice/kubepods-pod" + uidU + ".slice/crio-conmon-" + cid + ".scope\n", uid, "",
			"/kubepods.slice/kubepods-pod" + uidU + ".slice/crio-conmon-" + cid + ".scope"},
		{"pod slice only", "0::/kubepods.slice/kubepods-pod" + uidU + ".slice\n", uid, "", "/kubepods.slice/kubepods-pod" + uidU + ".slice"},
		{"plain Docker container is not a pod", "0::/system.slice/docker-" + cid + ".scope\n", "", "", "/system.slice/docker-" + cid + ".scope"},
		{"v1 plain Docker", "3:memory:/docker/" + cid + "\n", "", "", "/docker/" + cid},
		{"a systemd service", "0::/system.slice/ssh.service\n", "", "", "/system.slice/ssh.service"},
		{"v1 and v2 mixed: the unified path when nothing names a pod", "5:cpu:/user.slice\n0::/init.scope\n", "", "", "/init.scope"},
		{"root cgroup", "0::/\n", "", "", "/"},
		{"empty (process already gone)", "", "", "", ""},
		{"garbage lines", "\x00\x01\nno colons\n::\n", "", "", ""},
		{"pod-like text that is not a pod segment",
			"0::/apps/mypod" + uid + "/" + cid + "\n", "", "", "/apps/mypod" + uid + "/" + cid},
		{"upper-case hex is not a kubelet UID", "0::/kubepods/pod" + strings.ToUpper(uid) + "/" + cid + "\n", "", "",
			"/kubepods/pod" + strings.ToUpper(uid) + "/" + cid},
		{"short container id", "0::/kubepods/pod" + uid + "/abc123\n", uid, "", "/kubepods/pod" + uid + "/abc123"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := parseCgroup(c.content)
			want := podIdentity{Cgroup: c.cgroup, PodUID: c.pod, ContainerID: c.container}
			if got != want {
				t.Fatalf("parseCgroup(%q)\n got %+v\nwant %+v", c.content, got, want)
			}
		})
	}
}

func TestParseArgs(t *testing.T) {
	c, lim, err := parseArgs(strings.Fields("-m 32G -f 5% -x 10% -t 30 -d 2 /var/coredump 4242 1000 1001 11 1700000000 web-7d9f myapp"))
	if err != nil {
		t.Fatal(err)
	}
	want := crash{Dir: "/var/coredump", GlobalPID: 4242, UID: 1000, GID: 1001, Signal: 11, Time: 1700000000, Hostname: "web-7d9f", Comm: "myapp"}
	if c != want {
		t.Fatalf("got %+v want %+v", c, want)
	}
	wantLim := limits{MaxSize: 32 << 30, Free: diskLimit{Percent: 5}, MaxUse: diskLimit{Percent: 10}, Deadline: 30 * time.Second, DumpMode: dumpRoot}
	if lim != wantLim {
		t.Fatalf("limits %+v", lim)
	}
	_, lim, err = parseArgs(strings.Fields("-f 512M -s all /d 1 0 0 6 0 h e"))
	wantLim = limits{Free: diskLimit{Bytes: 512 << 20}, MaxUse: diskLimit{Percent: 10}, Deadline: 10 * time.Minute, AllScope: true, DumpMode: dumpUnknown}
	if err != nil || lim != wantLim {
		t.Fatalf("defaults: %+v %v", lim, err)
	}
	if _, lim, _ = parseArgs(strings.Fields("/d 1 0 0 6 0 h e")); lim.AllScope || lim.Free.set() || lim.MaxUse != (diskLimit{Percent: 10}) {
		t.Fatalf("the default scope is pod, no floor, the shipper's default cap: %+v", lim)
	}
	if _, lim, _ = parseArgs(strings.Fields("-x 0 /d 1 0 0 6 0 h e")); lim.MaxUse.set() {
		t.Fatalf("-x 0 is no cap: %+v", lim)
	}
}

func TestParseArgsHostileValues(t *testing.T) {
	// A comm split on spaces (kernels before 5.3) is joined back; %h may hold anything but '/'.
	c, _, err := parseArgs([]string{"/d", "7", "0", "0", "11", "5", "-m", ".NET", "TP", "Worker"})
	if err != nil || c.Hostname != "-m" || c.Comm != ".NET TP Worker" {
		t.Fatalf("got %+v %v", c, err)
	}
	c, _, err = parseArgs([]string{"/d", "7", "0", "0", "11", "5", "..", "\x1b[31m;rm -rf"})
	if err != nil || c.Hostname != ".." || c.Comm != "\x1b[31m;rm -rf" {
		t.Fatalf("got %+v %v", c, err)
	}
}

func TestParseArgsRejects(t *testing.T) {
	for _, args := range []string{
		"/d 1 0 0 11 5 h",            // too few
		"relative 1 0 0 11 5 h e",    // DIR must be absolute
		"/d 0 0 0 11 5 h e",          // no pid 0
		"/d x 0 0 11 5 h e",          // not a number
		"/d 1 -1 0 11 5 h e",         // negative uid
		"/d 1 4294967296 0 11 5 h e", // uid beyond 32 bits
		"/d 99999999999999999999 0 0 11 5 h e",
		"-m 12X /d 1 0 0 11 5 h e",  // bad unit
		"-f 101% /d 1 0 0 11 5 h e", // bad percentage
		"-t 0 /d 1 0 0 11 5 h e",    // no deadline
		"-z /d 1 0 0 11 5 h e",      // unknown option
		"-x 10Q /d 1 0 0 11 5 h e",  // bad cap
		"-x -1% /d 1 0 0 11 5 h e",  // negative cap
		"-f NaN% /d 1 0 0 11 5 h e", // not a number
		"-s host /d 1 0 0 11 5 h e", // unknown scope
		"-d 3 /d 1 0 0 11 5 h e",    // no such dump mode
		"-d %d /d 1 0 0 11 5 h e",   // an unexpanded specifier
	} {
		if _, _, err := parseArgs(strings.Fields(args)); err == nil {
			t.Errorf("%q was accepted", args)
		}
	}
}

func TestSafeName(t *testing.T) {
	cases := map[string]string{
		"web-7d9f-abc":           "web-7d9f-abc",
		"python3.11":             "python3.11",
		"":                       "_",
		"a b/c":                  "a_b_c",
		"..":                     "..",
		"\xff\xfe\n\t$(id)":      "______id_",
		strings.Repeat("x", 100): strings.Repeat("x", 64),
	}
	for in, want := range cases {
		if got := safeName(in, 64); got != want {
			t.Errorf("safeName(%q) = %q, want %q", in, got, want)
		}
	}
	if got := safeName("ab\xe2\x82\xac", 3); got != "ab_" {
		t.Errorf("cut inside a multi-byte character: %q", got)
	}
}

func TestParseSize(t *testing.T) {
	for text, want := range map[string]int64{"0": 0, "512": 512, "64K": 64 << 10, "100M": 100 << 20, "32G": 32 << 30, "2T": 2 << 40} {
		if got, err := parseSize(text); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v", text, got, err)
		}
	}
	for _, text := range []string{"", "-1", "1.5G", "G", "9999999999999T"} {
		if _, err := parseSize(text); err == nil {
			t.Errorf("parseSize(%q) accepted", text)
		}
	}
}

func TestDiskLimitResolve(t *testing.T) {
	if got := (diskLimit{Percent: 15}).resolve(1000); got != 150 {
		t.Errorf("15%% of 1000 = %d", got)
	}
	if got := (diskLimit{Bytes: 64 << 20}).resolve(1 << 40); got != 64<<20 {
		t.Errorf("bytes = %d", got)
	}
	if (diskLimit{}).set() {
		t.Error("zero is not set")
	}
}

func TestDropReason(t *testing.T) {
	inPod := procFacts{pod: podIdentity{PodUID: uid}}
	onHost := procFacts{pod: podIdentity{Cgroup: "/system.slice/kubelet.service"}}
	user := crash{UID: 1000}
	cases := []struct {
		name   string
		c      crash
		lim    limits
		proc   procFacts
		owner  uint32
		reason string
	}{
		{"pod, ordinary", user, limits{DumpMode: dumpUser}, inPod, 1000, ""},
		{"host process, scope pod", user, limits{DumpMode: dumpUser}, onHost, 1000, "scope"},
		{"host process, scope all", user, limits{DumpMode: dumpUser, AllScope: true}, onHost, 1000, ""},
		{"suid-safe from a pod, other uid", crash{UID: 101}, limits{DumpMode: dumpRoot}, inPod, 1000, ""},
		{"suid-safe dump of the owner's uid", user, limits{DumpMode: dumpRoot, AllScope: true}, onHost, 1000, "suid-owner"},
		{"unknown mode is treated as suid-safe", user, limits{DumpMode: dumpUnknown}, inPod, 1000, "suid-owner"},
		{"root-owned directory", crash{UID: 0}, limits{DumpMode: dumpRoot}, inPod, 0, ""},
	}
	for _, tc := range cases {
		if _, reason := dropReason(tc.c, tc.lim, tc.proc, tc.owner); reason != tc.reason {
			t.Errorf("%s: got %q want %q", tc.name, reason, tc.reason)
		}
	}
}

func TestDirectoryUseCountsFilesNotLinks(t *testing.T) {
	dir, outside := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "core.a"), bytes.Repeat([]byte{7}, 64<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(outside, "big")
	if err := os.WriteFile(big, bytes.Repeat([]byte{7}, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(big, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, failuresDir), 0o700); err != nil {
		t.Fatal(err)
	}
	fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	used, err := directoryUse(fd)
	if err != nil || used < 64<<10 || used >= 1<<20 {
		t.Fatalf("directoryUse = %d, %v: the file's blocks only", used, err)
	}
	if n, err := countEntries(fd, 10); err != nil || n != 3 {
		t.Fatalf("countEntries = %d, %v", n, err)
	}
}
