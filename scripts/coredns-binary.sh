#!/usr/bin/env bash
# coredns-binary.sh builds CoreDNS (github.com/coredns/coredns, the version
# test/coredns/build requires) for the node in a box's DNS scenario, cached
# by that module's go.sum (scripts/tool-binary.sh; a cold build took about
# 7 minutes on 2 busy CPUs). The binary's path is the last line on stdout.
exec "$(dirname "${BASH_SOURCE[0]}")/tool-binary.sh" coredns test/coredns/build github.com/coredns/coredns
