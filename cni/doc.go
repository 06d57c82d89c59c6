// Package cni will hold the podnic CNI plugin: config parsing and
// validation, ADD / DEL / CHECK / STATUS / GC / VERSION, standalone and
// chained modes, and the cached state DEL needs. It attaches the pinned
// programs bpf/ loaded; it never loads programs on the ADD path.
package cni
