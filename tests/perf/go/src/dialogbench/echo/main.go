// Command echo is a fast echo back-end for the benchmark, over mutual TLS.
//
// dialog.backend.v1.Backend/Converse answers each message like the reference
// chat back-end answers a one-word text: one delta with the text, then a final
// text reply, both with context.reply_to set; the delta carries the time it was
// sent in context.labels (wire.SentLabel). Every other method echoes each
// request message back unchanged (a unary call answers once, a stream answers
// every message), for the gateway's transparent gRPC proxy path. It serves
// grpc.health.v1 too, and server reflection describing echo.Echo (reflection.go)
// so that the gateway knows echo.Echo/Say is unary.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"io"
	"io/ioutil"
	"log"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"dialogbench/wire"
)

const conversePath = "/dialog.backend.v1.Backend/Converse"

var replies uint64

// eachRequest calls answer with each request message of stream until the client
// ends it (nil) or a call fails (that error).
func eachRequest(stream grpc.ServerStream, answer func(in *wire.Frame) error) error {
	var in wire.Frame
	for {
		if err := stream.RecvMsg(&in); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
		if err := answer(&in); err != nil {
			return err
		}
	}
}

func converse(stream grpc.ServerStream) error {
	return eachRequest(stream, func(in *wire.Frame) error {
		msgs, err := wire.Field1s(in.B)
		if err != nil {
			return err
		}
		for _, raw := range msgs {
			req, err := wire.Decode(raw)
			if err != nil {
				return err
			}
			for _, kind := range []string{"delta", "text"} {
				out := wire.Msg{
					ID:             "echo-" + strconv.FormatUint(atomic.AddUint64(&replies, 1), 36),
					Role:           wire.RoleAssistant,
					Type:           kind,
					Text:           req.Text,
					ReplyTo:        req.ID,
					Service:        req.Service,
					ConversationID: req.ConversationID,
				}
				if kind == "delta" {
					out.SentNs = strconv.FormatInt(time.Now().UnixNano(), 10)
				}
				if err := stream.SendMsg(&wire.Frame{B: wire.Field1(out.Encode())}); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

func echo(stream grpc.ServerStream) error {
	return eachRequest(stream, func(in *wire.Frame) error { return stream.SendMsg(in) })
}

func handle(_ interface{}, stream grpc.ServerStream) error {
	switch method, _ := grpc.MethodFromServerStream(stream); method {
	case conversePath:
		return converse(stream)
	case reflectionV1Path:
		return reflectionV1(stream)
	}
	return echo(stream)
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "gRPC listen address (loopback)")
	certFile := flag.String("cert", "", "server certificate (PEM)")
	keyFile := flag.String("key", "", "its private key (PEM)")
	caFile := flag.String("ca", "", "CA that must have signed the client certificate (PEM)")
	flag.Parse()

	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		log.Fatalf("certificate: %v", err)
	}
	caPEM, err := ioutil.ReadFile(*caFile)
	if err != nil {
		log.Fatalf("ca: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		log.Fatal("ca: no certificate")
	}
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	})
	host, _, err := net.SplitHostPort(*listen)
	if err != nil || (host != "127.0.0.1" && host != "localhost") {
		log.Fatalf("refusing a non-loopback address %q", *listen)
	}
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	server := grpc.NewServer(
		grpc.Creds(creds),
		grpc.CustomCodec(wire.Codec{}),
		grpc.UnknownServiceHandler(handle),
	)
	healthpb.RegisterHealthServer(server, health.NewServer())
	registerReflection(server)
	log.Printf("echo back-end on %s", lis.Addr())
	if err := server.Serve(lis); err != nil {
		log.Fatalf("serve: %v", err)
	}
}
