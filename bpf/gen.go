package bpf

//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -target bpfel -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -type pn_reason -type pn_dir -type pn_ct_flags -type pn_svc_flags -type pn_backend_state -type pn_cfg_flags podnic podnic.c
