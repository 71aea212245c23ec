package meter

import (
	"reflect"
	"strconv"
	"testing"
	"unicode/utf8"

	"github.com/meterd/meterd/meter/strictjson"
	"github.com/valyala/fastjson"
)

// FuzzParseDocumentStrict checks that the pricing document is read as
// strictly as every request body (API.md, "Conventions"): an accepted
// document is valid UTF-8 without unpaired surrogate escapes, has no key
// twice in any object and only the contract's keys, in their case; parsing
// is deterministic; and an accepted document whose first key is repeated,
// given in another case, or given a value that is not valid Unicode is
// refused with invalid_request naming that key. FuzzParseDocument checks
// the round trip through Compile.
func FuzzParseDocumentStrict(f *testing.F) {
	f.Add([]byte(exampleDoc))
	f.Add([]byte(exampleCanonical))
	f.Add([]byte(`{"assets":[{"code":"CREDITS","scale":0}],"\u0061ssets":[]}`))
	f.Add([]byte(`{"Assets":[{"code":"CREDITS","scale":0}]}`))
	f.Add([]byte(`{"assets":[{"code":"CREDITS","scale":0}],"prices":[{"event_type":"e\ud800","account":"a:CREDITS","unit_price":"1"}]}`))
	f.Add([]byte(`{"assets":[{"code":"CREDITS","scale":0}],"prices":[{"event_type":"e","account":"a:CREDITS","dimensions":["m"],"unit_price":{"x":"1","X":"2","x":"3"}}]}`))
	f.Add([]byte("{\"assets\":[{\"code\":\"CR\xffDITS\",\"scale\":0}]}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		doc, err := ParseDocument(b)
		doc2, err2 := ParseDocument(b)
		if !reflect.DeepEqual(doc, doc2) || !reflect.DeepEqual(err, err2) {
			t.Fatalf("parsing %q twice: %v then %v", b, err, err2)
		}
		if err != nil {
			e, ok := err.(*Error)
			if !ok || e.Code == "" || e.Message == "" {
				t.Fatalf("error %#v is not an *Error", err)
			}
			return
		}
		if reason := invalidUnicode(b); reason != "" {
			t.Fatalf("accepted %q: %s", b, reason)
		}
		var p fastjson.Parser
		v, perr := p.ParseBytes(b)
		if perr != nil {
			t.Fatalf("accepted %q, which fastjson cannot parse: %v", b, perr)
		}
		checkDocTree(t, b, v, docShape, "")
		checkDocMutations(t, b)
	})
}

// docShape is the contract's pricing document: an object's keys, exactly,
// with their shapes, or an array's elements' shape. nil: a scalar, or data
// (a unit_price map's keys are dimension values).
type docShapeT struct {
	members map[string]*docShapeT
	elem    *docShapeT
}

func docObject(m map[string]*docShapeT) *docShapeT { return &docShapeT{members: m} }
func docArray(e *docShapeT) *docShapeT             { return &docShapeT{elem: e} }

var docShape = docObject(map[string]*docShapeT{
	"assets": docArray(docObject(map[string]*docShapeT{"code": nil, "scale": nil})),
	"prices": docArray(docObject(map[string]*docShapeT{"event_type": nil, "account": nil, "dimensions": nil, "unit_price": nil,
		"components": docArray(docObject(map[string]*docShapeT{"field": nil, "package_size": nil, "unit_price": nil}))})),
	"topup_offers": docArray(docObject(map[string]*docShapeT{"currency": nil, "account": nil, "min": nil, "max": nil,
		"tiers": docArray(docObject(map[string]*docShapeT{"from": nil, "credits_per_unit": nil}))})),
})

func checkDocTree(t *testing.T, b []byte, v *fastjson.Value, sh *docShapeT, path string) {
	t.Helper()
	switch v.Type() {
	case fastjson.TypeObject:
		o, _ := v.Object()
		seen := map[string]bool{}
		o.Visit(func(k []byte, mv *fastjson.Value) {
			key := string(k)
			if seen[key] {
				t.Fatalf("accepted %q with %q twice in %q", b, key, path)
			}
			seen[key] = true
			var next *docShapeT
			if sh != nil && sh.members != nil {
				s, ok := sh.members[key]
				if !ok {
					t.Fatalf("accepted %q with the undocumented key %q in %q", b, key, path)
				}
				next = s
			}
			checkDocTree(t, b, mv, next, path+"."+key)
		})
	case fastjson.TypeArray:
		a, _ := v.Array()
		var next *docShapeT
		if sh != nil {
			next = sh.elem
		}
		for _, e := range a {
			checkDocTree(t, b, e, next, path+"[]")
		}
	}
}

func checkDocMutations(t *testing.T, b []byte) {
	t.Helper()
	for _, m := range strictjson.Mutations(b) {
		_, err := ParseDocument(m.Body)
		e, ok := err.(*Error)
		if !ok || e.Code != "invalid_request" || e.Field != m.Field {
			t.Fatalf("%s: %q answered %v, want invalid_request naming %q", m.What, m.Body, err, m.Field)
		}
	}
}

// invalidUnicode returns why b is not valid Unicode text ("" when it is):
// invalid UTF-8 anywhere, or, inside a string, a \u escape of a UTF-16
// surrogate that is not a high one followed by a low one. It is written
// apart from the decoder's checks, as the fuzzer's oracle.
func invalidUnicode(b []byte) string {
	if !utf8.Valid(b) {
		return "invalid UTF-8"
	}
	in := false
	for i := 0; i < len(b); i++ {
		switch {
		case b[i] == '"':
			in = !in
		case in && b[i] == '\\' && i+1 < len(b):
			i++
			if b[i] != 'u' || i+4 >= len(b) {
				continue
			}
			u, err := strconv.ParseUint(string(b[i+1:i+5]), 16, 16)
			if err != nil {
				continue
			}
			i += 4
			switch {
			case u >= 0xDC00 && u <= 0xDFFF:
				return "unpaired low surrogate escape"
			case u >= 0xD800 && u <= 0xDBFF:
				if i+6 >= len(b) || b[i+1] != '\\' || b[i+2] != 'u' {
					return "unpaired high surrogate escape"
				}
				lo, err := strconv.ParseUint(string(b[i+3:i+7]), 16, 16)
				if err != nil || lo < 0xDC00 || lo > 0xDFFF {
					return "unpaired high surrogate escape"
				}
				i += 6
			}
		}
	}
	return ""
}
