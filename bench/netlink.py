"""The kernel floor of an endpoint: a veth pair created, its host end put on
a bridge and brought up, with two rtnetlink requests and nothing else (what a
network driver cannot avoid doing per container). A tiny netlink client, so the
floor is measured in the same process and run as the plugin's calls."""

import os
import socket
import struct

RTM_NEWLINK, RTM_DELLINK = 16, 17
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLMSG_ERROR = 2
IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_FD = 3, 10, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFF_UP = 1
NLA_F_NESTED = 0x8000


def _attr(kind, payload):
    length = 4 + len(payload)
    return struct.pack("HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _name(kind, name):
    return _attr(kind, name.encode() + b"\0")


def _ifinfo(index=0, flags=0, change=0):
    return struct.pack("BxHiII", socket.AF_UNSPEC, 0, index, flags, change)


class Netlink:
    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.settimeout(5)
        self.sock.bind((0, 0))
        self.seq = 0

    def request(self, msg_type, flags, payload, what):
        self.seq += 1
        header = struct.pack("IHHII", 16 + len(payload), msg_type, NLM_F_REQUEST | NLM_F_ACK | flags, self.seq, 0)
        self.sock.send(header + payload)
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset < len(data):
                length, kind, _, seq, _ = struct.unpack_from("IHHII", data, offset)
                if kind == NLMSG_ERROR and seq == self.seq:
                    (errno,) = struct.unpack_from("i", data, offset + 16)
                    if errno:
                        raise OSError(-errno, f"{what}: {os.strerror(-errno)}")
                    return
                offset += (length + 3) & ~3

    def create_bridge(self, name):
        info = _attr(IFLA_LINKINFO | NLA_F_NESTED, _name(IFLA_INFO_KIND, "bridge"))
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, _ifinfo(flags=IFF_UP, change=IFF_UP) + _name(IFLA_IFNAME, name) + info,
                     f"create bridge {name}")

    def create_veth(self, host, peer):
        peer_info = _attr(VETH_INFO_PEER | NLA_F_NESTED, _ifinfo() + _name(IFLA_IFNAME, peer))
        info = _attr(IFLA_LINKINFO | NLA_F_NESTED,
                     _name(IFLA_INFO_KIND, "veth") + _attr(IFLA_INFO_DATA | NLA_F_NESTED, peer_info))
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, _ifinfo() + _name(IFLA_IFNAME, host) + info,
                     f"create veth {host}")

    def attach_up(self, name, master_index):
        self.request(RTM_NEWLINK, 0, _ifinfo(flags=IFF_UP, change=IFF_UP) + _name(IFLA_IFNAME, name)
                     + _attr(IFLA_MASTER, struct.pack("I", master_index)), f"attach {name}")

    def move_to_netns(self, name, ns_fd):
        self.request(RTM_NEWLINK, 0, _ifinfo() + _name(IFLA_IFNAME, name) + _attr(IFLA_NET_NS_FD, struct.pack("I", ns_fd)),
                     f"move {name} to a namespace")

    def delete(self, name):
        self.request(RTM_DELLINK, 0, _ifinfo() + _name(IFLA_IFNAME, name), f"delete {name}")

    def close(self):
        self.sock.close()


def links_with_prefix(prefix):
    return sorted(n for _, n in socket.if_nameindex() if n.startswith(prefix))


class PeerNamespace:
    """Where a joined endpoint's container end goes, as dockerd moves it into
    the container's namespace: a plugin treats a pair left whole in the host
    as a container gone. One namespace holds every peer (their names are unique)."""

    def __init__(self, name):
        import subprocess
        self.name = name
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        self.fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        self.nl = Netlink()

    def take(self, join_reply):
        self.nl.move_to_netns(join_reply["InterfaceName"]["SrcName"], self.fd)

    def close(self):
        import subprocess
        if self.fd is None:
            return
        self.nl.close()
        os.close(self.fd)
        self.fd = None
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
