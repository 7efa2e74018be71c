package dashboard

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/outboxkit/outboxkit/internal/failure"
	"github.com/outboxkit/outboxkit/internal/ops"
	"github.com/outboxkit/outboxkit/internal/pgutil"
	"github.com/outboxkit/outboxkit/internal/safetext"
)

// maxReason bounds the reason typed into a form.
const maxReason = 2000

// redriveTimeout bounds a bulk redrive. It goes on if the browser leaves:
// each replay is its own audited transaction, so stopping halfway would be
// safe, but the operator would not see what was done.
const redriveTimeout = 30 * time.Minute

// reason reads the form's reason, or says why it cannot be used.
func reason(r *http.Request) (string, string) {
	text := strings.TrimSpace(r.PostForm.Get("reason"))
	switch {
	case text == "":
		return "", "A reason is required: say why (an incident or ticket number helps whoever reads the audit log)."
	case len(text) > maxReason:
		return "", fmt.Sprintf("The reason is longer than %d characters.", maxReason)
	}
	return text, ""
}

// opsError turns an error of an action into a message for the operator.
func opsError(err error) string {
	switch {
	case errors.Is(err, ops.ErrNoBroker):
		return noBrokerText(err)
	case errors.Is(err, ops.ErrSentNotRecorded), errors.Is(err, ops.ErrOutcomeUnknown):
		// Never "changed nothing": the message may be at the broker.
		return "Do not retry: the message may have been sent. " + safetext.Escape(pgutil.Redact(err.Error()))
	case errors.Is(err, ops.ErrSentTwice):
		return "Do not retry: the message was sent twice. " + safetext.Escape(pgutil.Redact(err.Error()))
	case errors.Is(err, ops.ErrWrongStatus), errors.Is(err, ops.ErrNotFound), errors.Is(err, ops.ErrBadRef),
		errors.Is(err, ops.ErrNoReason), errors.Is(err, ops.ErrNoActor), errors.Is(err, ops.ErrRequestPending),
		errors.Is(err, ops.ErrApprovalRequired), errors.Is(err, ops.ErrBusy):
		return safetext.Escape(err.Error())
	}
	return "The action failed and changed nothing: " + safetext.Escape(pgutil.Redact(err.Error()))
}

// noBrokerText says how to start serve so that it can send a broker dead
// letter back (err wraps an *ops.NoBrokerError).
func noBrokerText(err error) string {
	var nb *ops.NoBrokerError
	if !errors.As(err, &nb) {
		return safetext.Escape(err.Error())
	}
	return fmt.Sprintf("Start serve with %s (or set %s) to replay this message: it goes back to the broker it came from.", nb.Flag, nb.Env)
}

func (s *server) logAction(rc reqCtx, action, target string, err error) {
	if err != nil {
		s.cfg.Logger.Warn("dashboard: action failed", slog.String("user", rc.sess.user), slog.String("action", action),
			slog.String("target", target), slog.Any("error", err))
		return
	}
	s.cfg.Logger.Info("dashboard: action", slog.String("user", rc.sess.user), slog.String("action", action),
		slog.String("target", target))
}

// eventAction runs replay, drop, restore or edit on one outbox event, with
// the signed-in user as the actor and the typed reason.
func (s *server) eventAction(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	verb := r.PathValue("verb")
	switch verb {
	case "replay", "drop", "restore", "edit":
	default:
		s.errorPage(w, r, rc, http.StatusNotFound, "No such action.")
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), pageTimeout)
	defer cancel()
	ref, err := s.store.ParseRef(ctx, r.PathValue("ref"))
	if err != nil {
		if errors.Is(err, ops.ErrNotFound) || errors.Is(err, ops.ErrBadRef) {
			s.errorPage(w, r, rc, http.StatusNotFound, err.Error())
			return
		}
		s.internalError(w, r, rc, err)
		return
	}
	back := "/events/" + url.PathEscape(ref.String())
	why, bad := reason(r)
	if bad != "" {
		s.redirectFlash(w, r, rc, back, "error", bad)
		return
	}
	a := ops.Action{Actor: rc.sess.user, Reason: why}
	var out ops.Outcome
	var payload []byte
	var ctype string
	switch verb {
	case "replay":
		out, err = s.store.Replay(ctx, a, ref)
	case "drop":
		out, err = s.store.Drop(ctx, a, ref)
	case "restore":
		out, err = s.store.Restore(ctx, a, ref)
	case "edit":
		var msg string
		payload, ctype, msg = editedPayload(r)
		if msg != "" {
			s.redirectFlash(w, r, rc, back, "error", msg)
			return
		}
		out, err = s.store.Edit(ctx, a, ref, payload, ctype)
	}
	if errors.Is(err, ops.ErrApprovalRequired) {
		// The two-person rule: record exactly this as an approval.
		ap, aerr := s.store.RequestApproval(ctx, a, ops.ApprovalSpec{Verb: verb, Refs: []ops.Ref{ref}, Payload: payload, ContentType: ctype})
		s.logAction(rc, "request approval of "+verb, ref.String(), aerr)
		if aerr != nil {
			s.redirectFlash(w, r, rc, back, "error", opsError(aerr))
			return
		}
		s.redirectFlash(w, r, rc, back, "ok", fmt.Sprintf("The two-person rule is on: nothing ran. Approval #%d (%s %s) waits for a second operator: outboxkit dlq approve %d, before %s.",
			ap.ID, verb, ref, ap.ID, ap.ExpiresAt.Format(time.RFC3339)))
		return
	}
	s.logAction(rc, verb, ref.String(), err)
	if err != nil {
		s.redirectFlash(w, r, rc, back, "error", opsError(err))
		return
	}
	text := fmt.Sprintf("%s %s.", ref, out.Result)
	switch {
	case out.Result == "replayed" && ref.Kind == ops.KindInbox && out.Request == 0,
		out.Result == "edited" && out.NewEventID != "":
		// A broker dead letter: sent at once, nothing else to wait for.
		text = fmt.Sprintf("%s %s: %s.", ref, out.Result, safetext.Escape(out.Note))
		out.Note = ""
	case ref.Kind == ops.KindInbox && out.Request != 0 && verb != "drop":
		text = fmt.Sprintf("%s: %s requested (#%d). Its consumer applies it when it next polls, within seconds while it runs; the requests below show the outcome.", ref, verb, out.Request)
		out.Note = ""
	case verb == "replay":
		text += " The relay publishes it on its next round; this page shows when."
	case out.NewRef != nil:
		text = fmt.Sprintf("%s edited: the corrected copy is %s and takes its place; the original is kept, dropped.", ref, out.NewRef)
		back = "/events/" + url.PathEscape(out.NewRef.String())
	}
	if out.Note != "" {
		text += " " + safetext.Escape(out.Note) + "."
	}
	s.redirectFlash(w, r, rc, back, "ok", text)
}

// editedPayload reads the corrected payload of the edit form.
func editedPayload(r *http.Request) ([]byte, string, string) {
	raw := r.PostForm.Get("payload")
	var payload []byte
	switch r.PostForm.Get("encoding") {
	case "", "text":
		// Browsers send a textarea's line breaks as CRLF; payloads that
		// need exact bytes are edited as base64.
		payload = []byte(strings.ReplaceAll(raw, "\r\n", "\n"))
	case "base64":
		var err error
		payload, err = base64.StdEncoding.DecodeString(strings.Join(strings.Fields(raw), ""))
		if err != nil {
			return nil, "", "The corrected payload is not valid base64."
		}
	default:
		return nil, "", "Choose text or base64 for the payload."
	}
	if len(payload) == 0 {
		return nil, "", "The corrected payload is empty."
	}
	ctype := strings.TrimSpace(r.PostForm.Get("content_type"))
	if ctype != "" {
		if _, _, err := mime.ParseMediaType(ctype); err != nil || len(ctype) > 200 {
			return nil, "", "The content type is not a media type (e.g. application/json)."
		}
	}
	return payload, ctype, ""
}

// redrive replays every parked outbox event, or every inbox dead letter,
// matching the filter, in key order, rate-limited, at most as many as the
// preview showed.
func (s *server) redrive(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	f := readFilter(r.PostForm, 100).forRedrive()
	d := redriveData{Filter: f, Rate: 50, Classes: failure.Classes}
	if v, err := strconv.ParseFloat(r.PostForm.Get("rate"), 64); err == nil && v > 0 {
		d.Rate = min(v, 500)
	}
	of, err := f.opsFilter(time.Now())
	if err != nil {
		d.Err = err.Error()
		s.render(w, r, http.StatusBadRequest, "redrive.html", s.pd(rc, "Bulk redrive", "redrive", d))
		return
	}
	why, bad := reason(r)
	if bad != "" {
		d.Err = bad
		s.render(w, r, http.StatusBadRequest, "redrive.html", s.pd(rc, "Bulk redrive", "redrive", d))
		return
	}
	d.Reason = why
	if n, err := strconv.Atoi(r.PostForm.Get("expected")); err == nil && n > 0 {
		of.Limit = min(n, 10000)
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), redriveTimeout)
	defer cancel()
	outs, err := s.store.Redrive(ctx, ops.Action{Actor: rc.sess.user, Reason: why}, of, ops.RedriveOptions{PerSec: d.Rate})
	if errors.Is(err, ops.ErrApprovalRequired) {
		// The two-person rule: record what the filter matches as an approval.
		ap, aerr := s.store.RequestApproval(ctx, ops.Action{Actor: rc.sess.user, Reason: why},
			ops.ApprovalSpec{Verb: "redrive", Filter: &of, PerSec: d.Rate})
		s.logAction(rc, "request approval of redrive", f.Query(), aerr)
		if aerr != nil {
			d.Err = opsError(aerr)
		} else {
			d.Err = fmt.Sprintf("The two-person rule is on: nothing ran. Approval #%d (a redrive of %d events) waits for a second operator: outboxkit dlq approve %d, before %s.",
				ap.ID, len(ap.Refs), ap.ID, ap.ExpiresAt.Format(time.RFC3339))
		}
		s.render(w, r, http.StatusAccepted, "redrive.html", s.pd(rc, "Bulk redrive", "redrive", d))
		return
	}
	s.logAction(rc, "redrive", f.Query(), err)
	if err != nil && len(outs) == 0 {
		d.Err = opsError(err)
		s.render(w, r, http.StatusInternalServerError, "redrive.html", s.pd(rc, "Bulk redrive", "redrive", d))
		return
	}
	if err != nil {
		d.Err = "Stopped early: " + opsError(err)
	}
	counts := map[string]int{}
	for _, o := range outs {
		counts[o.Result]++
	}
	for k, v := range counts {
		d.Counts = append(d.Counts, header{k, strconv.Itoa(v)})
	}
	d.Done, d.Results = true, outs
	s.render(w, r, http.StatusOK, "redrive.html", s.pd(rc, "Bulk redrive", "redrive", d))
}

// laneAction runs retry-head, skip-head or release on one held key.
func (s *server) laneAction(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	topic, key := r.PostForm.Get("topic"), r.PostForm.Get("key")
	verb := ops.LaneAction(r.PostForm.Get("verb"))
	back := "/lanes"
	if verb != ops.LaneRetryHead && verb != ops.LaneSkipHead && verb != ops.LaneRelease {
		s.redirectFlash(w, r, rc, back, "error", "Choose retry head, skip head or release.")
		return
	}
	if topic == "" || key == "" {
		s.redirectFlash(w, r, rc, back, "error", "The lane's topic and key are missing.")
		return
	}
	why, bad := reason(r)
	if bad != "" {
		s.redirectFlash(w, r, rc, back, "error", bad)
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), pageTimeout)
	defer cancel()
	out, err := s.store.ActOnLane(ctx, ops.Action{Actor: rc.sess.user, Reason: why}, topic, key, verb)
	s.logAction(rc, "lane "+string(verb), topic+"/"+key, err)
	if err != nil {
		s.redirectFlash(w, r, rc, back, "error", opsError(err))
		return
	}
	text := fmt.Sprintf("%s/%s: %s %s.", safetext.Escape(topic), safetext.Escape(key), out.Ref, out.Result)
	if out.Note != "" {
		text += " " + safetext.Escape(out.Note) + "."
	}
	s.redirectFlash(w, r, rc, back, "ok", text)
}
