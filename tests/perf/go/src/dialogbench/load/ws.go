package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io/ioutil"
	"net/http"
	"time"

	"github.com/gorilla/websocket"

	"dialogbench/wire"
)

var jsonMarshal = json.Marshal

type wsWorker struct {
	o    *options
	conn *websocket.Conn
}

// wsFrame is the part of a Dialog Gateway frame (docs/protocol.md) or a Go
// gateway frame ({"result": {...}}) that the worker checks.
type wsFrame struct {
	Role    string `json:"role"`
	Content struct {
		Type string `json:"type"`
		Text string `json:"text"`
	} `json:"content"`
	Context struct {
		ReplyTo string            `json:"reply_to"`
		Labels  map[string]string `json:"labels"`
	} `json:"context"`
	Result *struct {
		ID   string `json:"id"`
		Text string `json:"text"`
	} `json:"result"`
}

func tlsConfig(o *options) (*tls.Config, error) {
	cfg := &tls.Config{ServerName: o.serverName, MinVersion: tls.VersionTLS12}
	if o.caFile != "" {
		pem, err := ioutil.ReadFile(o.caFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate in %s", o.caFile)
		}
	}
	if o.certFile != "" {
		cert, err := tls.LoadX509KeyPair(o.certFile, o.keyFile)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

func dialWS(o *options, i int) (worker, error) {
	cfg, err := tlsConfig(o)
	if err != nil {
		return nil, err
	}
	d := websocket.Dialer{HandshakeTimeout: shotTimeout, TLSClientConfig: cfg}
	header := http.Header{}
	if o.frames == "dialog" {
		d.Subprotocols = []string{"dialog.v1.json"}
		if tok := o.token(i); tok != "" {
			header.Set("Authorization", "Bearer "+tok)
		}
	}
	conn, resp, err := d.Dial(o.url, header)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("%v (HTTP %d)", err, resp.StatusCode)
		}
		return nil, err
	}
	return &wsWorker{o: o, conn: conn}, nil
}

func (w *wsWorker) shot(id string) (float64, error) {
	var out interface{}
	if w.o.frames == "dialog" {
		out = map[string]interface{}{
			"id": id, "role": "user",
			"content": map[string]string{"type": "text", "text": w.o.text},
		}
	} else {
		out = map[string]string{"id": id, "text": w.o.text}
	}
	b, _ := json.Marshal(out)
	if err := w.conn.WriteMessage(websocket.TextMessage, b); err != nil {
		return -1, err
	}
	w.conn.SetReadDeadline(time.Now().Add(shotTimeout))
	ttft := -1.0
	for {
		_, data, err := w.conn.ReadMessage()
		if err != nil {
			return -1, err
		}
		var f wsFrame
		if err := json.Unmarshal(data, &f); err != nil {
			return -1, err
		}
		if w.o.frames != "dialog" {
			if f.Result == nil || f.Result.ID != id || f.Result.Text != w.o.text {
				return -1, fmt.Errorf("unexpected frame %.200s", data)
			}
			return -1, nil
		}
		if f.Content.Type == "delta" && f.Context.ReplyTo == id && ttft < 0 {
			ttft = sinceSent(f.Context.Labels[wire.SentLabel])
		}
		final := f.Content.Type != "ack" && f.Content.Type != "delta" && f.Role != "event"
		if f.Content.Type == "error" || (final && f.Context.ReplyTo == id) {
			if f.Content.Type != "text" || f.Content.Text != w.o.text {
				return -1, fmt.Errorf("unexpected final %.200s", data)
			}
			return ttft, nil
		}
	}
}

func (w *wsWorker) close() {
	msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
	w.conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
	w.conn.Close()
}
