package bpf

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// crc32cPoly is the CRC32c (Castagnoli) polynomial, reflected: bit 31 is
// x^0, as in a CRC register.
const crc32cPoly = 0x82f63b78

// crc32cMul returns a·b modulo the CRC32c polynomial, both reflected, for
// an a whose low 32 - bits bits are zero: the same computation as
// pn_crc32c_mul in bpf/lib/sctp.h.
func crc32cMul(a, b uint32, bits int) uint32 {
	var p uint32
	for i := range bits {
		p ^= b & -((a >> (31 - i)) & 1)
		b = (b >> 1) ^ (crc32cPoly & -(b & 1))
	}
	return p
}

// crc32cShifts returns the table the programs update an SCTP packet's CRC
// with when they rewrite a port (bpf/lib/sctp.h): x^(8i) for i < 256, then
// x^(8·256·i), modulo the CRC32c polynomial.
func crc32cShifts() [512]uint32 {
	var t [512]uint32
	one, x8 := uint32(1)<<31, uint32(1)<<23 // x^0, x^8
	t[0] = one
	for i := 1; i < 256; i++ {
		t[i] = crc32cMul(t[i-1], x8, 32)
	}
	x2048 := crc32cMul(t[255], x8, 32) // x^(8·256)
	t[256] = one
	for i := 1; i < 256; i++ {
		t[256+i] = crc32cMul(t[256+i-1], x2048, 32)
	}
	return t
}

// setCRC32cShifts writes the table into the object's read-only data before
// it is loaded: without it every SCTP port rewrite would corrupt the CRC.
func setCRC32cShifts(spec *ebpf.CollectionSpec) error {
	v, ok := spec.Variables["pn_crc32c_x8"]
	if !ok {
		return fmt.Errorf("setting the SCTP CRC table: the object has no pn_crc32c_x8")
	}
	if err := v.Set(crc32cShifts()); err != nil {
		return fmt.Errorf("setting the SCTP CRC table: %w", err)
	}
	return nil
}
