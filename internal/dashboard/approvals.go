package dashboard

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/outboxkit/outboxkit/internal/ops"
	"github.com/outboxkit/outboxkit/internal/safetext"
)

// The two-person rule in the dashboard: pending approvals, and a second
// signed-in operator's approve or reject.

type approvalsData struct {
	Settings  ops.Settings
	Approvals []*ops.Approval
}

func (s *server) approvals(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	var d approvalsData
	var err error
	if d.Settings, err = s.store.Settings(ctx); err != nil {
		s.internalError(w, r, rc, err)
		return
	}
	if d.Approvals, err = s.store.Approvals(ctx, r.URL.Query().Get("all") != "", 200); err != nil {
		s.internalError(w, r, rc, err)
		return
	}
	s.render(w, r, http.StatusOK, "approvals.html", s.pd(rc, "Approvals", "approvals", d))
}

// approvalAction approves (and runs) or rejects one approval as the
// signed-in user.
func (s *server) approvalAction(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	back := "/approvals"
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	verb := r.PathValue("verb")
	if err != nil || id <= 0 || (verb != "approve" && verb != "reject") {
		s.errorPage(w, r, rc, http.StatusNotFound, "No such approval action.")
		return
	}
	why, bad := reason(r)
	if bad != "" {
		s.redirectFlash(w, r, rc, back, "error", bad)
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), redriveTimeout)
	defer cancel()
	a := ops.Action{Actor: rc.sess.user, Reason: why}
	var outs []ops.Outcome
	if verb == "reject" {
		err = s.store.Reject(ctx, a, id)
	} else {
		outs, err = s.store.Approve(ctx, a, id, ops.RedriveOptions{})
	}
	s.logAction(rc, verb, fmt.Sprintf("approval %d", id), err)
	switch {
	case errors.Is(err, ops.ErrOwnApproval), errors.Is(err, ops.ErrApprovalExpired), errors.Is(err, ops.ErrApprovalDecided):
		s.redirectFlash(w, r, rc, back, "error", safetext.Escape(err.Error()))
		return
	case err != nil && len(outs) == 0:
		s.redirectFlash(w, r, rc, back, "error", opsError(err))
		return
	}
	if verb == "reject" {
		s.redirectFlash(w, r, rc, back, "ok", fmt.Sprintf("Approval #%d rejected: nothing runs.", id))
		return
	}
	counts := map[string]int{}
	for _, o := range outs {
		counts[o.Result]++
	}
	text := fmt.Sprintf("Approval #%d approved and run:", id)
	for _, res := range []string{"replayed", "requested", "dropped", "edited", "failed"} {
		if counts[res] > 0 {
			text += fmt.Sprintf(" %d %s;", counts[res], res)
		}
	}
	text += " the audit log names you as approver."
	if err != nil {
		text += " Stopped early: " + opsError(err)
	}
	s.redirectFlash(w, r, rc, back, "ok", text)
}
