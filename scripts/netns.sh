#!/usr/bin/env bash
# Runs a command inside a fresh network namespace with only loopback up, and
# removes the namespace afterwards. WebRTC connections (the ICE agent of the
# native WebRTC stack, and Chromium's candidate gathering) join or send
# multicast on every interface they see: here they see only this namespace's
# loopback and a veth pair inside it with a private address (exported as
# PERSIST_NETNS_ADDR): the native WebRTC stack gathers no loopback
# candidates, so WebRTC tests listen there. Needs root (CI and these machines
# run as root) and iproute2.
set -euo pipefail
ns="persist-$$"
ip netns add "$ns"
trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" ip link add persist0 type veth peer name persist1
ip netns exec "$ns" ip addr add 10.77.0.1/24 dev persist0
ip netns exec "$ns" ip link set persist0 up
ip netns exec "$ns" ip link set persist1 up
PERSIST_NETNS_ADDR=10.77.0.1 ip netns exec "$ns" "$@"
