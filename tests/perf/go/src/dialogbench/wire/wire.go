// Package wire encodes and decodes the few protobuf messages the benchmark
// programs exchange (dialog.v1.Message and its envelopes), field by field, so
// that they build from the Debian Go packages without generated code.
//
// Field numbers: protos/dialog/v1/message.proto, gateway.proto and
// protos/dialog/backend/v1/backend.proto.
package wire

import (
	"errors"
	"fmt"

	"github.com/golang/protobuf/proto"
	"google.golang.org/protobuf/encoding/protowire"
)

// Role values of dialog.v1.Role.
const (
	RoleUser      = 1
	RoleAssistant = 2
	RoleEvent     = 5
)

// Frame is one gRPC message kept as bytes: the Codec passes it through unchanged.
type Frame struct{ B []byte }

// Codec passes *Frame values as they are and any other value to protobuf, so
// that one server can relay bytes and still serve grpc.health.v1.
type Codec struct{}

// Marshal implements grpc's codec interfaces.
func (Codec) Marshal(v interface{}) ([]byte, error) {
	if f, ok := v.(*Frame); ok {
		return f.B, nil
	}
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("cannot marshal %T", v)
	}
	return proto.Marshal(m)
}

// Unmarshal implements grpc's codec interfaces.
func (Codec) Unmarshal(data []byte, v interface{}) error {
	if f, ok := v.(*Frame); ok {
		f.B = append(f.B[:0], data...)
		return nil
	}
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("cannot unmarshal into %T", v)
	}
	return proto.Unmarshal(data, m)
}

// Name implements encoding.Codec.
func (Codec) Name() string { return "proto" }

// String implements the older grpc.Codec.
func (Codec) String() string { return "proto" }

// SentLabel is the context label in which the echo back-end writes, on its first delta,
// the wall-clock time it sent it (Unix nanoseconds): the load generator reads it to measure
// the time from the back-end's first delta to the client.
const SentLabel = "sent_unix_ns"

// Msg holds the fields of dialog.v1.Message the benchmark reads or writes.
type Msg struct {
	ID, Type, Text, ReplyTo, Service, ConversationID string
	Role                                             uint64
	SentNs                                           string // context.labels[SentLabel]
}

// Encode returns the Message in wire form.
func (m Msg) Encode() []byte {
	var b []byte
	b = appendString(b, 1, m.ID)
	if m.Role != 0 {
		b = protowire.AppendTag(b, 2, protowire.VarintType)
		b = protowire.AppendVarint(b, m.Role)
	}
	var content []byte
	content = appendString(content, 1, m.Type)
	content = appendString(content, 2, m.Text)
	b = appendBytes(b, 3, content)
	var ctx []byte
	ctx = appendString(ctx, 1, m.ConversationID)
	ctx = appendString(ctx, 3, m.Service)
	ctx = appendString(ctx, 4, m.ReplyTo)
	if m.SentNs != "" {
		// A map entry is a message with the key as field 1 and the value as field 2.
		ctx = appendBytes(ctx, 5, Field12(SentLabel, m.SentNs))
	}
	if len(ctx) > 0 {
		b = appendBytes(b, 4, ctx)
	}
	return b
}

// IsFinal follows docs/protocol.md: anything but an ack, a delta or an event is final.
func (m Msg) IsFinal() bool {
	return m.Type != "ack" && m.Type != "delta" && m.Role != RoleEvent
}

// Field1 wraps an encoded message as field 1 of an envelope (SendRequest,
// dialog.v1.ConverseRequest, or a one-message backend ConverseRequest/Response).
func Field1(msgs ...[]byte) []byte {
	var b []byte
	for _, m := range msgs {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendBytes(b, m)
	}
	return b
}

// Field1s returns every field 1 of an envelope (its messages).
func Field1s(b []byte) ([][]byte, error) {
	var out [][]byte
	err := walk(b, func(num protowire.Number, typ protowire.Type, v []byte) {
		if num == 1 && typ == protowire.BytesType {
			out = append(out, v)
		}
	})
	return out, err
}

// Decode parses a dialog.v1.Message.
func Decode(b []byte) (Msg, error) {
	var m Msg
	var inner error
	err := walk(b, func(num protowire.Number, typ protowire.Type, v []byte) {
		switch {
		case num == 1 && typ == protowire.BytesType:
			m.ID = string(v)
		case num == 2 && typ == protowire.VarintType:
			m.Role, _ = protowire.ConsumeVarint(v)
		case num == 3 && typ == protowire.BytesType:
			inner = firstErr(inner, walk(v, func(n protowire.Number, t protowire.Type, w []byte) {
				if t == protowire.BytesType && n == 1 {
					m.Type = string(w)
				} else if t == protowire.BytesType && n == 2 {
					m.Text = string(w)
				}
			}))
		case num == 4 && typ == protowire.BytesType:
			inner = firstErr(inner, walk(v, func(n protowire.Number, t protowire.Type, w []byte) {
				if t != protowire.BytesType {
					return
				}
				switch n {
				case 1:
					m.ConversationID = string(w)
				case 3:
					m.Service = string(w)
				case 4:
					m.ReplyTo = string(w)
				case 5:
					k, v := mapEntry(w)
					if k == SentLabel {
						m.SentNs = v
					}
				}
			}))
		}
	})
	return m, firstErr(err, inner)
}

func mapEntry(b []byte) (key, value string) {
	walk(b, func(n protowire.Number, t protowire.Type, w []byte) {
		if t == protowire.BytesType && n == 1 {
			key = string(w)
		} else if t == protowire.BytesType && n == 2 {
			value = string(w)
		}
	})
	return key, value
}

func firstErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// walk calls fn with each field's number, type and raw value (a varint's
// bytes for VarintType, the payload for BytesType).
func walk(b []byte, fn func(protowire.Number, protowire.Type, []byte)) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errors.New("bad tag")
		}
		b = b[n:]
		var v []byte
		switch typ {
		case protowire.BytesType:
			val, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return errors.New("bad length")
			}
			v, n = val, m
		case protowire.VarintType:
			_, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return errors.New("bad varint")
			}
			v, n = b[:m], m
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return errors.New("bad field")
			}
		}
		fn(num, typ, v)
		b = b[n:]
	}
	return nil
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendBytes(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

// Field12 encodes a message with two string fields, 1 and 2 (echo.Msg: id, text).
func Field12(one, two string) []byte {
	return appendString(appendString(nil, 1, one), 2, two)
}
