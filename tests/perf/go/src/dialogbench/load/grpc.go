package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"dialogbench/wire"
)

var (
	connOnce sync.Once
	conn     *grpc.ClientConn
	connErr  error
)

// dialOnce returns the one HTTP/2 connection every gRPC worker multiplexes over.
func dialOnce(o *options) (*grpc.ClientConn, error) {
	connOnce.Do(func() {
		opts := []grpc.DialOption{
			grpc.WithBlock(),
			grpc.WithDefaultCallOptions(grpc.ForceCodec(wire.Codec{})),
		}
		if o.plaintext {
			opts = append(opts, grpc.WithInsecure())
		} else {
			cfg, err := tlsConfig(o)
			if err != nil {
				connErr = err
				return
			}
			opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		}
		ctx, cancel := context.WithTimeout(context.Background(), shotTimeout)
		defer cancel()
		conn, connErr = grpc.DialContext(ctx, o.target, opts...)
	})
	return conn, connErr
}

type grpcWorker struct {
	o      *options
	cc     *grpc.ClientConn
	md     metadata.MD
	stream grpc.ClientStream // converse, gw-converse, bidi
	cancel context.CancelFunc
}

var (
	bidiDesc   = &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}
	serverDesc = &grpc.StreamDesc{ServerStreams: true}
)

func newGRPCWorker(o *options, i int) (worker, error) {
	cc, err := dialOnce(o)
	if err != nil {
		return nil, err
	}
	w := &grpcWorker{o: o, cc: cc, md: metadata.MD{}}
	if tok := o.token(i); tok != "" {
		w.md.Set("authorization", "Bearer "+tok)
	}
	path := o.path
	switch o.mode {
	case "converse":
		w.md.Set("x-dialog-user", o.user)
		path = "/dialog.backend.v1.Backend/Converse"
	case "gw-converse":
		path = "/dialog.v1.Gateway/Converse"
	case "gw-send", "unary":
		return w, nil
	}
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(context.Background(), w.md))
	w.cancel = cancel
	w.stream, err = cc.NewStream(ctx, bidiDesc, path)
	return w, err
}

func (w *grpcWorker) userText(id string) []byte {
	return wire.Msg{ID: id, Role: wire.RoleUser, Type: "text", Text: w.o.text}.Encode()
}

// awaitFinal reads replies until the final one for id; each response carries
// its messages as field 1.
func (w *grpcWorker) awaitFinal(s grpc.ClientStream, id string) (float64, error) {
	var in wire.Frame
	ttft := -1.0
	for {
		if err := s.RecvMsg(&in); err != nil {
			if err == io.EOF {
				return -1, fmt.Errorf("stream ended before the final reply")
			}
			return -1, err
		}
		msgs, err := wire.Field1s(in.B)
		if err != nil {
			return -1, err
		}
		for _, raw := range msgs {
			m, err := wire.Decode(raw)
			if err != nil {
				return -1, err
			}
			if m.Type == "delta" && m.ReplyTo == id && ttft < 0 {
				ttft = sinceSent(m.SentNs)
			}
			if m.IsFinal() && (m.ReplyTo == id || m.Type == "error") {
				if m.Type != "text" || m.Text != w.o.text {
					return -1, fmt.Errorf("unexpected final %s %q", m.Type, m.Text)
				}
				return ttft, nil
			}
		}
	}
}

func (w *grpcWorker) shot(id string) (float64, error) {
	switch w.o.mode {
	case "converse", "gw-converse":
		if err := w.stream.SendMsg(&wire.Frame{B: wire.Field1(w.userText(id))}); err != nil {
			return -1, err
		}
		return w.awaitFinal(w.stream, id)
	case "gw-send":
		ctx, cancel := w.callContext()
		defer cancel()
		s, err := w.cc.NewStream(ctx, serverDesc, "/dialog.v1.Gateway/Send")
		if err != nil {
			return -1, err
		}
		if err := s.SendMsg(&wire.Frame{B: wire.Field1(w.userText(id))}); err != nil {
			return -1, err
		}
		if err := s.CloseSend(); err != nil {
			return -1, err
		}
		ttft, err := w.awaitFinal(s, id)
		if err != nil {
			return -1, err
		}
		var rest wire.Frame
		for {
			if err := s.RecvMsg(&rest); err == io.EOF {
				return ttft, nil
			} else if err != nil {
				return -1, err
			}
		}
	case "unary":
		ctx, cancel := w.callContext()
		defer cancel()
		body := echoMsg(id, w.o.text)
		var out wire.Frame
		if err := w.cc.Invoke(ctx, w.o.path, &wire.Frame{B: body}, &out); err != nil {
			return -1, err
		}
		return -1, sameEcho(body, out.B)
	default: // bidi
		body := echoMsg(id, w.o.text)
		if err := w.stream.SendMsg(&wire.Frame{B: body}); err != nil {
			return -1, err
		}
		var out wire.Frame
		if err := w.stream.RecvMsg(&out); err != nil {
			return -1, err
		}
		return -1, sameEcho(body, out.B)
	}
}

func (w *grpcWorker) callContext() (context.Context, context.CancelFunc) {
	ctx := metadata.NewOutgoingContext(context.Background(), w.md)
	return context.WithTimeout(ctx, shotTimeout)
}

// echoMsg is an echo.Msg (1: id, 2: text): the body of the echo methods.
func echoMsg(id, text string) []byte {
	return wire.Field12(id, text)
}

func sameEcho(sent, got []byte) error {
	if !bytes.Equal(sent, got) {
		return fmt.Errorf("the echo differs from the request")
	}
	return nil
}

func (w *grpcWorker) close() {
	if w.stream != nil {
		w.stream.CloseSend()
		done := make(chan struct{})
		go func() {
			var f wire.Frame
			for w.stream.RecvMsg(&f) == nil {
			}
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
		}
	}
	if w.cancel != nil {
		w.cancel()
	}
}
