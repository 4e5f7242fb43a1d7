package main

import "strings"

// podIdentity is what /proc/<pid>/cgroup says about the Kubernetes pod and container of a process.
type podIdentity struct {
	Cgroup      string // the cgroup path that named them (or the unified one when none did)
	PodUID      string // canonical dashed form; empty when the process is not in a pod
	ContainerID string // 64 lower-case hex digits, without the runtime's prefix
}

// parseCgroup reads the contents of /proc/<pid>/cgroup. It understands cgroup v1 and v2 lines
// ("ID:controllers:path"), the cgroupfs driver (".../kubepods/<qos>/pod<uid>/<id>"), the systemd
// driver (".../kubepods-<qos>-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope", with
// crio- and docker- as well) and containerd's "slice:cri-containerd:<id>" form. A process that is
// not in a pod (plain Docker, a systemd service) gets neither a pod UID nor a container ID.
func parseCgroup(content string) podIdentity {
	var unified, first string
	for _, line := range strings.Split(content, "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 || parts[2] == "" {
			continue
		}
		path := parts[2]
		if first == "" {
			first = path
		}
		if parts[0] == "0" && parts[1] == "" {
			unified = path
		}
		if uid, cid := podFromPath(path); uid != "" {
			return podIdentity{Cgroup: path, PodUID: uid, ContainerID: cid}
		}
	}
	if unified != "" {
		return podIdentity{Cgroup: unified}
	}
	return podIdentity{Cgroup: first}
}

// podFromPath finds the pod segment of a cgroup path and the container segment after it.
func podFromPath(path string) (string, string) {
	segments := strings.Split(path, "/")
	for i, segment := range segments {
		// containerd with the systemd driver may join slice and container: "<slice>:cri-containerd:<id>".
		head, rest, joined := strings.Cut(segment, ":")
		uid := podUID(head)
		if uid == "" {
			continue
		}
		if joined {
			return uid, containerID(rest)
		}
		for _, next := range segments[i+1:] {
			if id := containerID(next); id != "" {
				return uid, id
			}
		}
		return uid, ""
	}
	return "", ""
}

// podUID returns the dashed pod UID of a segment such as "pod<uid>" or
// "kubepods-burstable-pod<uid_with_underscores>.slice", or "".
func podUID(segment string) string {
	segment = strings.TrimSuffix(segment, ".slice")
	at := strings.LastIndex(segment, "pod")
	if at < 0 || len(segment)-at-3 != 36 {
		return ""
	}
	if at > 0 && segment[at-1] != '-' { // "pod" must start the segment or follow a dash
		return ""
	}
	raw := []byte(segment[at+3:])
	for i, c := range raw {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' && c != '_' {
				return ""
			}
			raw[i] = '-'
		default:
			if !isHex(c) {
				return ""
			}
		}
	}
	return string(raw)
}

// containerID returns the 64-hex id of a container segment ("<id>", "cri-containerd-<id>.scope",
// "crio-<id>.scope", "docker-<id>.scope", "cri-containerd:<id>"), or "" (conmon, pause slices...).
func containerID(segment string) string {
	segment = strings.TrimSuffix(segment, ".scope")
	for _, prefix := range []string{"cri-containerd-", "cri-containerd:", "crio-", "docker-", "containerd-"} {
		if strings.HasPrefix(segment, prefix) {
			segment = segment[len(prefix):]
			break
		}
	}
	if len(segment) != 64 {
		return ""
	}
	for i := 0; i < len(segment); i++ {
		if !isHex(segment[i]) {
			return ""
		}
	}
	return segment
}

func isHex(c byte) bool {
	return ('0' <= c && c <= '9') || ('a' <= c && c <= 'f')
}
