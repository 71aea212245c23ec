// Package strictjson reads request bodies as the contract reads them: a key
// given twice, a key in another case than documented, a member the contract
// does not know, invalid UTF-8 and an unpaired UTF-16 surrogate escape are
// errors, at every depth, and each error says where it is as a field path of
// the contract ("plan.allocations[0].amount", "metadata.k").
//
// The strictness itself is github.com/go-json-experiment/json's (the
// upstream of encoding/json/v2): names are matched case-sensitively,
// duplicate names and invalid UTF-8 are syntax errors of its jsontext layer,
// and RejectUnknownMembers refuses unknown names. This package adds only
// what the library leaves to its caller: the options, spelled out at the
// call site, and the translation of its errors (a JSON Pointer, an error
// value) into a kind and a path.
package strictjson

import (
	"bytes"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Options are the decoding options of every request body. They are the
// library's defaults but for RejectUnknownMembers, and are stated anyway so
// that a change of default cannot loosen a decoder.
var Options = json.JoinOptions(
	json.RejectUnknownMembers(true),
	json.MatchCaseInsensitiveNames(false),
	jsontext.AllowDuplicateNames(false),
	jsontext.AllowInvalidUTF8(false),
)

// Unmarshal decodes the JSON text b into v with Options. Its errors are
// the library's; Explain tells what and where they are.
func Unmarshal(b []byte, v any) error { return json.Unmarshal(b, v, Options) }

// Valid reports an error unless b is one JSON value that Unmarshal would
// read: valid UTF-8, no unpaired surrogate escape, no key twice in any
// object, nothing after the value.
func Valid(b []byte) error {
	var v jsontext.Value
	return json.Unmarshal(b, &v, Options)
}

// Kind is what is wrong with a body.
type Kind uint8

const (
	// Syntax: the text is not JSON (including an empty text and data after
	// the value).
	Syntax Kind = iota
	// Duplicate: an object has the key at Path twice.
	Duplicate
	// InvalidText: a string (value or key) at Path holds invalid UTF-8 or
	// an unpaired UTF-16 surrogate escape. For a key, Path is its object.
	InvalidText
	// UnknownName: the object at Path's parent has no member named as
	// Path's last key (names are case-sensitive).
	UnknownName
	// WrongType: the value at Path is not of the JSON kind its Go type
	// reads, or is out of its range.
	WrongType
)

// Problem is an error of Unmarshal or Valid, explained.
type Problem struct {
	Kind Kind
	// Path is the field path of the contract: keys joined by ".", array
	// indexes as "[i]"; "" is the body itself.
	Path string
	// Name is the offending key, as given (Duplicate, UnknownName).
	Name string
	// Offset is the byte offset in the body where the problem was found.
	Offset int64
	// GoType is the Go type that could not take the value (WrongType), or
	// the struct that has no member Name (UnknownName); nil otherwise.
	GoType reflect.Type
	// Err is the library's description of the problem.
	Err error
}

// Explain explains err, an error of Unmarshal or Valid on body.
func Explain(body []byte, err error) Problem {
	var syn *jsontext.SyntacticError
	var sem *json.SemanticError
	switch {
	case errors.As(err, &syn):
		p := Problem{Kind: Syntax, Offset: syn.ByteOffset, Err: syn.Err}
		switch {
		case errors.Is(syn.Err, jsontext.ErrDuplicateName):
			p.Kind, p.Path, p.Name = Duplicate, Path(body, syn.JSONPointer), syn.JSONPointer.LastToken()
		case invalidTextAt(body, syn.ByteOffset):
			p.Kind, p.Path = InvalidText, Path(body, syn.JSONPointer)
		}
		return p
	case errors.As(err, &sem):
		p := Problem{Kind: WrongType, Path: Path(body, sem.JSONPointer), Offset: sem.ByteOffset, GoType: sem.GoType, Err: sem.Err}
		if errors.Is(sem.Err, json.ErrUnknownName) {
			p.Kind, p.Name = UnknownName, sem.JSONPointer.LastToken()
		}
		if p.Err == nil {
			p.Err = errors.New("wrong type")
		}
		return p
	}
	return Problem{Kind: Syntax, Err: err}
}

// invalidTextAt reports whether the text at off starts with a byte that is
// not valid UTF-8 or with a \u escape of a UTF-16 surrogate: the two causes
// of an invalid string that the library reports at their own offset.
func invalidTextAt(body []byte, off int64) bool {
	if off < 0 || off >= int64(len(body)) {
		return false
	}
	b := body[off:]
	if b[0] >= utf8.RuneSelf {
		r, n := utf8.DecodeRune(b)
		return r == utf8.RuneError && n <= 1
	}
	if len(b) < 6 || b[0] != '\\' || b[1] != 'u' {
		return false
	}
	u, err := strconv.ParseUint(string(b[2:6]), 16, 16)
	return err == nil && u >= 0xD800 && u <= 0xDFFF
}

// Path turns ptr, a JSON Pointer into body, into a field path of the
// contract. Whether a token is an array index or an object key is read
// from body itself (a key may be "0"); the walk stops at ptr's end, before
// whatever made body invalid further on. Should body not hold ptr, the rest
// of its tokens are joined as keys.
func Path(body []byte, ptr jsontext.Pointer) string {
	if ptr == "" {
		return ""
	}
	dec := jsontext.NewDecoder(bytes.NewReader(body), jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true))
	var b strings.Builder
	walking := true
	for tok := range ptr.Tokens() {
		if walking {
			index, found := step(dec, tok)
			if found && index {
				b.WriteString("[" + tok + "]")
				continue
			}
			walking = found
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(tok)
	}
	return b.String()
}

// step moves dec from the start of a value to the start of its member or
// element tok. It reports whether tok is an array index, and whether it was
// found.
func step(dec *jsontext.Decoder, tok string) (index, found bool) {
	switch dec.PeekKind() {
	case '{':
		if _, err := dec.ReadToken(); err != nil {
			return false, false
		}
		for dec.PeekKind() == '"' {
			name, err := dec.ReadToken()
			if err != nil {
				return false, false
			}
			if name.String() == tok {
				return false, true
			}
			if dec.SkipValue() != nil {
				return false, false
			}
		}
	case '[':
		n, err := strconv.Atoi(tok)
		if err != nil || n < 0 {
			return false, false
		}
		if _, err := dec.ReadToken(); err != nil {
			return false, false
		}
		for ; n > 0; n-- {
			if dec.PeekKind() == ']' || dec.SkipValue() != nil {
				return false, false
			}
		}
		return true, dec.PeekKind() != ']'
	}
	return false, false
}

// Mutation is a body changed in one way the contract refuses, and the field
// a strict decoder must name when it refuses it.
type Mutation struct {
	What  string
	Body  []byte
	Field string
}

// Mutations returns, for a JSON object body, the changes of its first member
// that every strict decoder must refuse naming that member's key: the key
// given twice, in another case, and with a value that is invalid UTF-8 or an
// unpaired surrogate escape. It returns nil when body is not an object with
// a member. It serves the decoders' fuzz tests, as their oracle.
func Mutations(body []byte) []Mutation {
	dec := jsontext.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.ReadToken(); err != nil || tok.Kind() != '{' || dec.PeekKind() != '"' {
		return nil
	}
	name, err := dec.ReadToken()
	if err != nil {
		return nil
	}
	key := name.String() // before the next read voids the token
	val, err := dec.ReadValue()
	if err != nil {
		return nil
	}
	val = bytes.Clone(val)
	rest := body[bytes.IndexByte(body, '{')+1:]
	member := func(k string, v []byte) []byte {
		b, _ := jsontext.AppendQuote([]byte{'{'}, k)
		b = append(append(b, ':'), v...)
		return append(append(b, ','), rest...)
	}
	out := []Mutation{{"first key twice", member(key, val), key}}
	for i, r := range key {
		c := unicode.ToUpper(r)
		if c == r {
			c = unicode.ToLower(r)
		}
		if c != r {
			variant := key[:i] + string(c) + key[i+utf8.RuneLen(r):]
			out = append(out, Mutation{"first key in another case", member(variant, val), variant})
			break
		}
	}
	return append(out,
		Mutation{"invalid UTF-8", member(key, []byte("\"\xff\"")), key},
		Mutation{"unpaired surrogate", member(key, []byte(`"\udc00"`)), key})
}
