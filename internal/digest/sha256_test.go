package digest

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"
)

func TestKnownAnswers(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
		{"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
		{"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
	} {
		got := SHA256([]byte(tc.in))
		if hex.EncodeToString(got[:]) != tc.want {
			t.Errorf("SHA256(%q) = %x, want %s", tc.in, got, tc.want)
		}
	}
}

// Every length across the padding's one- and two-block cases and a few
// blocks more, against the standard library.
func TestSameAsCryptoSHA256(t *testing.T) {
	b := make([]byte, 300)
	for i := range b {
		b[i] = byte(i*7 + 3)
	}
	for n := 0; n <= len(b); n++ {
		if got, want := SHA256(b[:n]), sha256.Sum256(b[:n]); got != want {
			t.Fatalf("length %d: %x, want %x", n, got, want)
		}
	}
}

func FuzzSameAsCryptoSHA256(f *testing.F) {
	f.Add([]byte("table inet shunt"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := SHA256(b), sha256.Sum256(b); got != want {
			t.Fatalf("%x: %x, want %x", b, got, want)
		}
	})
}

func BenchmarkSHA256(b *testing.B) {
	p := make([]byte, 200) // about one rule's expressions
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		SHA256(p)
	}
}
