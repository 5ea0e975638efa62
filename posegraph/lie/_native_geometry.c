/*
 * Compiled per-element loops for the hot kernels of posegraph.lie.geometry (float64, CPU).
 *
 * Each function here computes, element by element, exactly the formulas and branches of the
 * Python kernel of the same name in posegraph/lie/geometry.py (the docstrings there cite their
 * sources: Barfoot, "State Estimation for Robotics", 2017, sec. 7.1; Sola et al., "A micro Lie
 * theory for state estimation in robotics", 2018). The Python kernels are a chain of tens of
 * array operations, each a pass over memory with a fixed per-call cost; here one pass does all
 * the work of an element in registers. posegraph.lie.geometry decides when this route is taken
 * (float64 CPU tensors with no gradient to record) and tests compare it with the array route.
 *
 * Besides, for one graph, the fused between-edge kernels of posegraph.costs.BetweenEdges (the logarithm with W e; J_r^-1
 * with its weighting and adjoint product) and the retraction of its free elements: the same
 * per-element functions called in one loop, so their values are the separate kernels', bit for
 * bit.
 *
 * Layouts (row-major, contiguous): SE(3) element [R | t] as 12 doubles, tangent (rho, omega) as
 * 6; SE(2) element (x, y, cos, sin) as 4, tangent (x, y, theta) as 3.
 *
 * Arguments are buffers (NumPy arrays); every length is checked against the element count, and
 * the loops run without the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Thresholds: posegraph.lie.geometry.SMALL_ANGLE, SMALL_ANGLE_GAMMA and NEAR_PI for float64. */
#define SMALL_ANGLE 1e-2
#define SMALL_ANGLE_GAMMA 0.25
#define NEAR_PI 1e-7

/* ---------------------------------------------------------------------------------------- */
/* Small helpers                                                                            */
/* ---------------------------------------------------------------------------------------- */

static inline int small_angle(double theta2) { return theta2 < SMALL_ANGLE * SMALL_ANGLE; }

static inline double dot3(const double *a, const double *b) {
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
}

static inline void cross3(const double *a, const double *b, double *out) {
    out[0] = a[1] * b[2] - a[2] * b[1];
    out[1] = a[2] * b[0] - a[0] * b[2];
    out[2] = a[0] * b[1] - a[1] * b[0];
}

/* X^-1 Y for SE(3) elements [R | t]: [Rx^T Ry | Rx^T (ty - tx)]. */
static inline void se3_inv_compose(const double *x, const double *y, double *out) {
    double d[3] = {y[3] - x[3], y[7] - x[7], y[11] - x[11]};
    for (int r = 0; r < 3; r++) {
        for (int c = 0; c < 3; c++)
            out[4 * r + c] = x[r] * y[c] + x[4 + r] * y[4 + c] + x[8 + r] * y[8 + c];
        out[4 * r + 3] = x[r] * d[0] + x[4 + r] * d[1] + x[8 + r] * d[2];
    }
}

/* alpha = (theta/2) cot(theta/2), beta = (1 - alpha) / theta^2: _half_cot_coefficient. */
static inline void half_cot(double theta2, double sine, double cosine, double *alpha, double *beta) {
    if (small_angle(theta2)) {
        *alpha = 1.0 - theta2 / 12.0 - theta2 * theta2 / 720.0;
        *beta = 1.0 / 12.0 + theta2 / 720.0 + theta2 * theta2 / 30240.0;
        return;
    }
    double t = sqrt(theta2);
    double a = cosine > 0 ? t * (1.0 + cosine) / (2.0 * sine) : t * sine / (2.0 * (1.0 - cosine));
    *alpha = a;
    *beta = (1.0 - a) / theta2;
}

/* A = sin(t)/t, B = (1 - cos t)/t^2, C = (t - sin t)/t^3 from t^2: _sinc_coefficients. */
static inline void sinc_coefficients(double theta2, double *a, double *b, double *c) {
    if (small_angle(theta2)) {
        double t4 = theta2 * theta2;
        *a = 1.0 - theta2 / 6.0 + t4 / 120.0;
        *b = 0.5 - theta2 / 24.0 + t4 / 720.0;
        *c = 1.0 / 6.0 - theta2 / 120.0 + t4 / 5040.0;
        return;
    }
    double t = sqrt(theta2), s = sin(t), co = cos(t);
    *a = s / t;
    *b = (1.0 - co) / theta2;
    *c = (t - s) / (theta2 * t);
}

/* ---------------------------------------------------------------------------------------- */
/* SE(3)                                                                                    */
/* ---------------------------------------------------------------------------------------- */

/* omega = Log(R) with theta^2, sin, cos: _so3_log_parts (general, small-angle, near-pi). */
static void so3_log(const double *e, double *omega, double *theta2_out, double *sine_out,
                    double *cosine_out) {
    const double r00 = e[0], r01 = e[1], r02 = e[2];
    const double r10 = e[4], r11 = e[5], r12 = e[6];
    const double r20 = e[8], r21 = e[9], r22 = e[10];
    double w[3] = {0.5 * (r21 - r12), 0.5 * (r02 - r20), 0.5 * (r10 - r01)};
    double cosine = 0.5 * ((r00 + r11 + r22) - 1.0);
    cosine = cosine < -1.0 ? -1.0 : (cosine > 1.0 ? 1.0 : cosine);
    double sin2 = dot3(w, w);
    double sine = sin2 == 0 ? 0.0 : sqrt(sin2);
    double theta = atan2(sine, cosine);
    double theta2 = theta * theta;
    int small = small_angle(theta2);
    int near_pi = (1.0 + cosine) <= NEAR_PI;
    if (near_pi) {
        /* the axis from the column of (R + R^T)/2 - cos I = (1 - cos) u u^T with the largest
           diagonal entry of R (first on ties), signed like w's matching entry */
        double diag[3] = {r00, r11, r22};
        int k = 0;
        if (diag[1] > diag[k]) k = 1;
        if (diag[2] > diag[k]) k = 2;
        double col[3];
        for (int i = 0; i < 3; i++)
            col[i] = 0.5 * (e[4 * i + k] + e[4 * k + i]) - (i == k ? cosine : 0.0);
        double norm = sqrt(dot3(col, col));
        double signed_theta = w[k] < 0 ? -theta : theta;
        for (int i = 0; i < 3; i++) omega[i] = col[i] / norm * signed_theta;
    } else {
        double scale = small ? 1.0 + theta2 / 6.0 + 7.0 * theta2 * theta2 / 360.0 : theta / sine;
        for (int i = 0; i < 3; i++) omega[i] = w[i] * scale;
    }
    *theta2_out = theta2;
    *sine_out = sine;
    *cosine_out = cosine;
}

/* e = Log(Z^-1 Xi^-1 Xj) with rel = Xi^-1 Xj and (theta^2, sin, cos, alpha, beta):
   se3_between_log_parts. */
static void se3_between_log_parts_one(const double *xi, const double *xj, const double *z,
                                      double *err, double *rel, double *scalars[5], Py_ssize_t i) {
    double e[12];
    se3_inv_compose(xi, xj, rel);
    se3_inv_compose(z, rel, e);
    double omega[3], theta2, sine, cosine, alpha, beta;
    so3_log(e, omega, &theta2, &sine, &cosine);
    half_cot(theta2, sine, cosine, &alpha, &beta);
    /* rho = alpha t - (omega x t)/2 + beta (omega . t) omega (Barfoot eq. 7.95) */
    double t[3] = {e[3], e[7], e[11]}, wxt[3];
    cross3(omega, t, wxt);
    double bwt = beta * dot3(omega, t);
    for (int k = 0; k < 3; k++) {
        err[k] = alpha * t[k] - 0.5 * wxt[k] + bwt * omega[k];
        err[3 + k] = omega[k];
    }
    scalars[0][i] = theta2;
    scalars[1][i] = sine;
    scalars[2][i] = cosine;
    scalars[3][i] = alpha;
    scalars[4][i] = beta;
}

/* gamma, delta: _se3_jr_inv_coefficients. */
static inline void se3_jr_inv_coefficients(double theta2, double sine, double cosine,
                                           double *gamma, double *delta) {
    double t4 = theta2 * theta2;
    if (theta2 < SMALL_ANGLE_GAMMA * SMALL_ANGLE_GAMMA)
        *gamma = 1.0 / 360.0 + theta2 / 7560.0 + t4 / 201600.0 + t4 * theta2 / 5987520.0 +
                 691.0 * t4 * t4 / 130767436800.0;
    else
        *gamma = (4.0 * cosine - 4.0 + sqrt(theta2) * sine + theta2) / (2.0 * t4 * (1.0 - cosine));
    if (small_angle(theta2)) {
        *delta = -1.0 / 6.0 - theta2 / 180.0 - t4 / 5040.0;
    } else {
        double t = sqrt(theta2);
        *delta = -(t - sine) / (2.0 * t * (1.0 - cosine));
    }
}

/* J_r^-1(e) = [[J, T], [0, J]] (6x6, row-major): _se3_jr_inv_blocks. */
static void se3_jr_inv_one(const double *xi, double theta2, double sine, double cosine,
                           double alpha, double beta, double *out) {
    const double *rho = xi, *w = xi + 3;
    double gamma, delta;
    se3_jr_inv_coefficients(theta2, sine, cosine, &gamma, &delta);
    double e = dot3(w, rho);
    double ge = gamma * e, de = delta * e;
    /* skew(w) and skew(rho), row-major */
    double sw[9] = {0, -w[2], w[1], w[2], 0, -w[0], -w[1], w[0], 0};
    double sr[9] = {0, -rho[2], rho[1], rho[2], 0, -rho[0], -rho[1], rho[0], 0};
    for (int r = 0; r < 3; r++) {
        for (int c = 0; c < 3; c++) {
            double outer = w[r] * w[c];
            double eye = r == c ? 1.0 : 0.0;
            double jinv = alpha * eye + beta * outer + 0.5 * sw[3 * r + c];
            double top = ge * outer + beta * w[r] * rho[c] + rho[r] * (beta * w[c]) + de * eye +
                         0.5 * sr[3 * r + c];
            out[6 * r + c] = jinv;
            out[6 * r + 3 + c] = top;
            out[6 * (r + 3) + c] = 0.0;
            out[6 * (r + 3) + 3 + c] = jinv;
        }
    }
}

/* out = M Ad(rel^-1) for M (k x 6): se3_mul_adjoint_inverse. With P = M_L R^T,
   out = [P, M_R R^T - P [t]x]; row r of P [t]x is P[r] x t. */
static void se3_mul_adjoint_inverse_one(const double *m, const double *rel, Py_ssize_t k,
                                        double *out) {
    const double t[3] = {rel[3], rel[7], rel[11]};
    for (Py_ssize_t r = 0; r < k; r++) {
        const double *ml = m + 6 * r, *mr = ml + 3;
        double p[3], q[3], pxt[3];
        for (int j = 0; j < 3; j++) {
            const double *row = rel + 4 * j; /* (x R^T)_j = sum_l x_l R[j, l] */
            p[j] = ml[0] * row[0] + ml[1] * row[1] + ml[2] * row[2];
            q[j] = mr[0] * row[0] + mr[1] * row[1] + mr[2] * row[2];
        }
        cross3(p, t, pxt);
        double *o = out + 6 * r;
        for (int j = 0; j < 3; j++) {
            o[j] = p[j];
            o[3 + j] = q[j] - pxt[j];
        }
    }
}

/* X Exp(delta): se3_retract, Exp from se3_exp (Rodrigues, V = I + B[w]x + C[w]x^2) and
   [w]x^2 = w w^T - theta^2 I. */
static void se3_retract_one(const double *x, const double *d, double *out) {
    const double *rho = d, *w = d + 3;
    double theta2 = dot3(w, w), a, b, c;
    sinc_coefficients(theta2, &a, &b, &c);
    double sw[9] = {0, -w[2], w[1], w[2], 0, -w[0], -w[1], w[0], 0};
    double rot[9], v[9];
    for (int r = 0; r < 3; r++)
        for (int col = 0; col < 3; col++) {
            double eye = r == col ? 1.0 : 0.0;
            double k2 = w[r] * w[col] - theta2 * eye;
            rot[3 * r + col] = eye + a * sw[3 * r + col] + b * k2;
            v[3 * r + col] = eye + b * sw[3 * r + col] + c * k2;
        }
    double te[3];
    for (int r = 0; r < 3; r++) te[r] = v[3 * r] * rho[0] + v[3 * r + 1] * rho[1] + v[3 * r + 2] * rho[2];
    for (int r = 0; r < 3; r++) {
        const double *xr = x + 4 * r;
        for (int col = 0; col < 3; col++)
            out[4 * r + col] = xr[0] * rot[col] + xr[1] * rot[3 + col] + xr[2] * rot[6 + col];
        out[4 * r + 3] = xr[0] * te[0] + xr[1] * te[1] + xr[2] * te[2] + xr[3];
    }
}

/* ---------------------------------------------------------------------------------------- */
/* SE(2)                                                                                    */
/* ---------------------------------------------------------------------------------------- */

/* X^-1 Y = (Rx^T (ty - tx), Rx^T Ry): _se2_inv_compose. */
static inline void se2_inv_compose(const double *x, const double *y, double *out) {
    double dx = y[0] - x[0], dy = y[1] - x[1], ac = x[2], as = x[3];
    out[0] = ac * dx + as * dy;
    out[1] = ac * dy - as * dx;
    out[2] = ac * y[2] + as * y[3];
    out[3] = ac * y[3] - as * y[2];
}

/* e = Log(Z^-1 Xi^-1 Xj), rel, alpha: se2_between_log_parts via _se2_log_parts. */
static void se2_between_log_parts_one(const double *xi, const double *xj, const double *z,
                                      double *err, double *rel, double *alpha_out) {
    double e[4];
    se2_inv_compose(xi, xj, rel);
    se2_inv_compose(z, rel, e);
    double c = e[2], s = e[3];
    double th = atan2(s, c), th2 = th * th;
    double norm = sqrt(c * c + s * s); /* (cos, sin) may drift off the unit circle */
    double alpha, beta;
    half_cot(th2, fabs(s) / norm, c / norm, &alpha, &beta);
    double half = 0.5 * th;
    err[0] = alpha * e[0] + half * e[1];
    err[1] = alpha * e[1] - half * e[0];
    err[2] = th;
    *alpha_out = alpha;
}

/* J_r^-1(rho, theta) = [[M^-1, -M^-1 v], [0, 1]]: _se2_jr_inv. */
static void se2_jr_inv_one(const double *xi, double alpha, double *out) {
    double p1 = xi[0], p2 = xi[1], th = xi[2], th2 = th * th, v1, v2;
    if (small_angle(th2)) {
        double s6 = 1.0 / 6.0 - th2 / 120.0 + th2 * th2 / 5040.0;
        double h = 0.5 - th2 / 24.0 + th2 * th2 / 720.0;
        v1 = p1 * th * s6 - p2 * h;
        v2 = p1 * h + p2 * th * s6;
    } else {
        double s = sin(th), c = cos(th);
        v1 = (th * p1 - p2 + p2 * c - p1 * s) / th2;
        v2 = (p1 + th * p2 - p1 * c - p2 * s) / th2;
    }
    double half = 0.5 * th;
    out[0] = alpha;
    out[1] = -half;
    out[2] = -(alpha * v1 - half * v2);
    out[3] = half;
    out[4] = alpha;
    out[5] = -(half * v1 + alpha * v2);
    out[6] = 0.0;
    out[7] = 0.0;
    out[8] = 1.0;
}

/* out = M Ad(rel^-1) for M (k x 3): se2_mul_adjoint_inverse, with
   Ad((u, c, s)) = [[c, -s, u_y], [s, c, -u_x], [0, 0, 1]] at rel^-1 = (-R^T t, R^T). */
static void se2_mul_adjoint_inverse_one(const double *m, const double *rel, Py_ssize_t k,
                                        double *out) {
    double tx = rel[0], ty = rel[1], c = rel[2], s = rel[3];
    double ux = -(c * tx + s * ty), uy = s * tx - c * ty, ic = c, is = -s;
    for (Py_ssize_t r = 0; r < k; r++) {
        const double *mr = m + 3 * r;
        double *o = out + 3 * r;
        o[0] = mr[0] * ic + mr[1] * is;
        o[1] = -mr[0] * is + mr[1] * ic;
        o[2] = mr[0] * uy - mr[1] * ux + mr[2];
    }
}

/* X Exp(delta): se2_retract with se2_exp. */
static void se2_retract_one(const double *x, const double *d, double *out) {
    double th = d[2], a, b, c;
    sinc_coefficients(th * th, &a, &b, &c);
    double bt = b * th;
    double ex = a * d[0] - bt * d[1], ey = bt * d[0] + a * d[1], ec = cos(th), es = sin(th);
    double ax = x[0], ay = x[1], ac = x[2], as = x[3];
    out[0] = ac * ex - as * ey + ax;
    out[1] = as * ex + ac * ey + ay;
    out[2] = ac * ec - as * es;
    out[3] = as * ec + ac * es;
}

/* ---------------------------------------------------------------------------------------- */
/* Small matrix products (the weighting of the fused between kernels)                     */
/* ---------------------------------------------------------------------------------------- */

/* out (m x n) = a (m x k) . b (k x n), row-major; each entry summed over l = 0 .. k-1 in order. */
static inline void matmul_one(const double *a, const double *b, double *out, Py_ssize_t m, Py_ssize_t k,
                              Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < m; i++)
        for (Py_ssize_t j = 0; j < n; j++) {
            double sum = 0.0;
            for (Py_ssize_t l = 0; l < k; l++) sum += a[i * k + l] * b[l * n + j];
            out[i * n + j] = sum;
        }
}

/* ---------------------------------------------------------------------------------------- */
/* Between edges with a full information weight, fused (posegraph.model.costs.BetweenEdges)     */
/* ---------------------------------------------------------------------------------------- */

/* The group of a fused between kernel: element size, tangent size, logarithm scalars. */
typedef struct {
    Py_ssize_t element, dof, scalars;
} Group;

static const Group SE3_GROUP = {12, 6, 5}, SE2_GROUP = {4, 3, 1};

/* Edge k's e = Log(Z^-1 Xi^-1 Xj) with rel and the scalars (the *_between_log_parts_one above),
   and W e (matmul_one). */
static void between_weighted_error_one(int se3, const double *xi, const double *xj, const double *z,
                                       const double *w, double *err, double *rel, double *scalars[5],
                                       Py_ssize_t k, double *werr) {
    if (se3) {
        se3_between_log_parts_one(xi, xj, z, err, rel, scalars, k);
        matmul_one(w, err, werr, 6, 6, 1);
    } else {
        se2_between_log_parts_one(xi, xj, z, err, rel, scalars[0] + k);
        matmul_one(w, err, werr, 3, 3, 1);
    }
}

/* Edge k's weighted Jacobians: out_j = W J_r^-1(e), out_i = -out_j Ad(rel^-1) (the jr_inv,
   block product and adjoint product above, in that order). */
static void between_weighted_jacobians_one(int se3, const double *err, double *scalars[5], Py_ssize_t k,
                                           const double *rel, const double *w, double *out_i,
                                           double *out_j) {
    double jac[36];
    Py_ssize_t d = se3 ? 6 : 3;
    if (se3) {
        se3_jr_inv_one(err, scalars[0][k], scalars[1][k], scalars[2][k], scalars[3][k], scalars[4][k], jac);
        matmul_one(w, jac, out_j, 6, 6, 6);
        se3_mul_adjoint_inverse_one(out_j, rel, 6, out_i);
    } else {
        se2_jr_inv_one(err, scalars[0][k], jac);
        matmul_one(w, jac, out_j, 3, 3, 3);
        se2_mul_adjoint_inverse_one(out_j, rel, 3, out_i);
    }
    for (Py_ssize_t e = 0; e < d * d; e++) out_i[e] = -out_i[e];
}

/* ---------------------------------------------------------------------------------------- */
/* Python bindings                                                                          */
/* ---------------------------------------------------------------------------------------- */

/* Checks that buffer `b` holds `count` doubles; sets a ValueError naming it otherwise. */
static int check_len(const Py_buffer *b, Py_ssize_t count, const char *name) {
    if (b->len != count * (Py_ssize_t)sizeof(double)) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd float64 values, received %zd bytes", name,
                     count, b->len);
        return 0;
    }
    return 1;
}

/* Checks that the `count` indices `idx` are in [0, n); sets a ValueError with `message` otherwise. */
static int indices_below(const int64_t *idx, Py_ssize_t count, Py_ssize_t n, const char *message) {
    for (Py_ssize_t k = 0; k < count; k++)
        if ((uint64_t)idx[k] >= (uint64_t)n) {
            PyErr_SetString(PyExc_ValueError, message);
            return 0;
        }
    return 1;
}

/* Checks that buffer `b` holds `count` int64 indices; sets a ValueError naming it otherwise. */
static int check_index_len(const Py_buffer *b, Py_ssize_t count, const char *name) {
    if (b->len != count * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd int64 indices, received %zd bytes", name, count,
                     b->len);
        return 0;
    }
    return 1;
}

static void release(Py_buffer *bufs, int count) {
    for (int i = 0; i < count; i++) PyBuffer_Release(&bufs[i]);
}

#define D(b) ((double *)(b).buf)

/* between_log_parts(xi, xj, z, err, rel, theta2, sin, cos, alpha, beta) for SE(3);
   (xi, xj, z, err, rel, alpha) for SE(2). */
static PyObject *py_se3_between_log_parts(PyObject *self, PyObject *args) {
    Py_buffer b[10];
    if (!PyArg_ParseTuple(args, "y*y*y*w*w*w*w*w*w*w*", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5],
                          &b[6], &b[7], &b[8], &b[9]))
        return NULL;
    Py_ssize_t n = b[0].len / (12 * (Py_ssize_t)sizeof(double));
    int ok = check_len(&b[0], 12 * n, "xi") && check_len(&b[1], 12 * n, "xj") &&
             check_len(&b[2], 12 * n, "z") && check_len(&b[3], 6 * n, "err") &&
             check_len(&b[4], 12 * n, "rel");
    for (int s = 5; ok && s < 10; s++) ok = check_len(&b[s], n, "log scalar");
    if (ok) {
        double *scalars[5] = {D(b[5]), D(b[6]), D(b[7]), D(b[8]), D(b[9])};
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++)
            se3_between_log_parts_one(D(b[0]) + 12 * i, D(b[1]) + 12 * i, D(b[2]) + 12 * i,
                                      D(b[3]) + 6 * i, D(b[4]) + 12 * i, scalars, i);
        Py_END_ALLOW_THREADS
    }
    release(b, 10);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* se3_jr_inv(xi, theta2, sin, cos, alpha, beta, out) */
static PyObject *py_se3_jr_inv(PyObject *self, PyObject *args) {
    Py_buffer b[7];
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*w*", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &b[6]))
        return NULL;
    Py_ssize_t n = b[0].len / (6 * (Py_ssize_t)sizeof(double));
    int ok = check_len(&b[0], 6 * n, "xi") && check_len(&b[6], 36 * n, "out");
    for (int s = 1; ok && s < 6; s++) ok = check_len(&b[s], n, "log scalar");
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++)
            se3_jr_inv_one(D(b[0]) + 6 * i, D(b[1])[i], D(b[2])[i], D(b[3])[i], D(b[4])[i],
                           D(b[5])[i], D(b[6]) + 36 * i);
        Py_END_ALLOW_THREADS
    }
    release(b, 7);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* mul_adjoint_inverse(m, rel, k, out): m (n, k, dof), rel (n, element), out like m. */
static PyObject *mul_adjoint_inverse(PyObject *args, int dof, int element_size,
                                     void (*one)(const double *, const double *, Py_ssize_t, double *)) {
    Py_buffer b[3];
    Py_ssize_t k;
    if (!PyArg_ParseTuple(args, "y*y*nw*", &b[0], &b[1], &k, &b[2])) return NULL;
    Py_ssize_t n = b[1].len / (element_size * (Py_ssize_t)sizeof(double));
    int ok = k >= 0 && check_len(&b[0], k * dof * n, "m") && check_len(&b[1], element_size * n, "rel") &&
             check_len(&b[2], k * dof * n, "out");
    if (k < 0) PyErr_SetString(PyExc_ValueError, "k: expected a count >= 0");
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++)
            one(D(b[0]) + k * dof * i, D(b[1]) + element_size * i, k, D(b[2]) + k * dof * i);
        Py_END_ALLOW_THREADS
    }
    release(b, 3);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_se3_mul_adjoint_inverse(PyObject *self, PyObject *args) {
    return mul_adjoint_inverse(args, 6, 12, se3_mul_adjoint_inverse_one);
}

static PyObject *py_se2_mul_adjoint_inverse(PyObject *self, PyObject *args) {
    return mul_adjoint_inverse(args, 3, 4, se2_mul_adjoint_inverse_one);
}

/* retract(x, delta, out) */
static PyObject *retract(PyObject *args, int dof, int element_size,
                         void (*one)(const double *, const double *, double *)) {
    Py_buffer b[3];
    if (!PyArg_ParseTuple(args, "y*y*w*", &b[0], &b[1], &b[2])) return NULL;
    Py_ssize_t n = b[0].len / (element_size * (Py_ssize_t)sizeof(double));
    int ok = check_len(&b[0], element_size * n, "x") && check_len(&b[1], dof * n, "delta") &&
             check_len(&b[2], element_size * n, "out");
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++)
            one(D(b[0]) + element_size * i, D(b[1]) + dof * i, D(b[2]) + element_size * i);
        Py_END_ALLOW_THREADS
    }
    release(b, 3);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_se3_retract(PyObject *self, PyObject *args) {
    return retract(args, 6, 12, se3_retract_one);
}

static PyObject *py_se2_retract(PyObject *self, PyObject *args) {
    return retract(args, 3, 4, se2_retract_one);
}

static PyObject *py_se2_between_log_parts(PyObject *self, PyObject *args) {
    Py_buffer b[6];
    if (!PyArg_ParseTuple(args, "y*y*y*w*w*w*", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]))
        return NULL;
    Py_ssize_t n = b[0].len / (4 * (Py_ssize_t)sizeof(double));
    int ok = check_len(&b[0], 4 * n, "xi") && check_len(&b[1], 4 * n, "xj") &&
             check_len(&b[2], 4 * n, "z") && check_len(&b[3], 3 * n, "err") &&
             check_len(&b[4], 4 * n, "rel") && check_len(&b[5], n, "alpha");
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++)
            se2_between_log_parts_one(D(b[0]) + 4 * i, D(b[1]) + 4 * i, D(b[2]) + 4 * i,
                                      D(b[3]) + 3 * i, D(b[4]) + 4 * i, D(b[5]) + i);
        Py_END_ALLOW_THREADS
    }
    release(b, 6);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* se2_jr_inv(xi, alpha, out) */
static PyObject *py_se2_jr_inv(PyObject *self, PyObject *args) {
    Py_buffer b[3];
    if (!PyArg_ParseTuple(args, "y*y*w*", &b[0], &b[1], &b[2])) return NULL;
    Py_ssize_t n = b[0].len / (3 * (Py_ssize_t)sizeof(double));
    int ok = check_len(&b[0], 3 * n, "xi") && check_len(&b[1], n, "alpha") &&
             check_len(&b[2], 9 * n, "out");
    if (ok) {
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) se2_jr_inv_one(D(b[0]) + 3 * i, D(b[1])[i], D(b[2]) + 9 * i);
        Py_END_ALLOW_THREADS
    }
    release(b, 3);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* between_weighted_error(se3, poses, ends_i, ends_j, z, w, err, rel, scalars, werr):
   poses (N, element), ends (E,) int64 element indices, z (E, element), w (E, dof, dof),
   err (E, dof), rel (E, element), scalars (count, E), werr (E, dof). */
static PyObject *py_between_weighted_error(PyObject *self, PyObject *args) {
    int se3;
    Py_buffer b[9];
    if (!PyArg_ParseTuple(args, "py*y*y*y*y*w*w*w*w*", &se3, &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &b[6],
                          &b[7], &b[8]))
        return NULL;
    const Group g = se3 ? SE3_GROUP : SE2_GROUP;
    const Py_ssize_t n = b[0].len / (g.element * (Py_ssize_t)sizeof(double));
    const Py_ssize_t edges = b[1].len / (Py_ssize_t)sizeof(int64_t);
    int ok = check_len(&b[0], g.element * n, "poses") && check_len(&b[3], g.element * edges, "z") &&
             check_len(&b[4], g.dof * g.dof * edges, "w") && check_len(&b[5], g.dof * edges, "err") &&
             check_len(&b[6], g.element * edges, "rel") && check_len(&b[7], g.scalars * edges, "scalars") &&
             check_len(&b[8], g.dof * edges, "werr");
    if (ok && b[2].len != b[1].len) {
        PyErr_SetString(PyExc_ValueError, "ends_j: expected as many entries as ends_i");
        ok = 0;
    }
    const int64_t *ei = (const int64_t *)b[1].buf, *ej = (const int64_t *)b[2].buf;
    const char *ends = "ends_i, ends_j: expected element indices < len(poses)";
    ok = ok && indices_below(ei, edges, n, ends) && indices_below(ej, edges, n, ends);
    if (ok) {
        double *scalars[5];
        for (Py_ssize_t s = 0; s < g.scalars; s++) scalars[s] = D(b[7]) + s * edges;
        const double *x = D(b[0]);
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t k = 0; k < edges; k++)
            between_weighted_error_one(se3, x + g.element * ei[k], x + g.element * ej[k], D(b[3]) + g.element * k,
                                       D(b[4]) + g.dof * g.dof * k, D(b[5]) + g.dof * k, D(b[6]) + g.element * k,
                                       scalars, k, D(b[8]) + g.dof * k);
        Py_END_ALLOW_THREADS
    }
    release(b, 9);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* between_weighted_jacobians(se3, err, scalars, rel, w, out_i, out_j): err (E, dof),
   scalars (count, E), rel (E, element), w (E, dof, dof), out_i and out_j (E, dof, dof). */
static PyObject *py_between_weighted_jacobians(PyObject *self, PyObject *args) {
    int se3;
    Py_buffer b[6];
    if (!PyArg_ParseTuple(args, "py*y*y*y*w*w*", &se3, &b[0], &b[1], &b[2], &b[3], &b[4], &b[5])) return NULL;
    const Group g = se3 ? SE3_GROUP : SE2_GROUP;
    const Py_ssize_t edges = b[0].len / (g.dof * (Py_ssize_t)sizeof(double));
    const Py_ssize_t block = g.dof * g.dof * edges;
    int ok = check_len(&b[0], g.dof * edges, "err") && check_len(&b[1], g.scalars * edges, "scalars") &&
             check_len(&b[2], g.element * edges, "rel") && check_len(&b[3], block, "w") &&
             check_len(&b[4], block, "out_i") && check_len(&b[5], block, "out_j");
    if (ok) {
        double *scalars[5];
        for (Py_ssize_t s = 0; s < g.scalars; s++) scalars[s] = D(b[1]) + s * edges;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t k = 0; k < edges; k++)
            between_weighted_jacobians_one(se3, D(b[0]) + g.dof * k, scalars, k, D(b[2]) + g.element * k,
                                           D(b[3]) + g.dof * g.dof * k, D(b[4]) + g.dof * g.dof * k,
                                           D(b[5]) + g.dof * g.dof * k);
        Py_END_ALLOW_THREADS
    }
    release(b, 6);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* Block k's d x d entries (row-major) to out: row r at out[rows[d k + r]] onward. */
static void put_block(const double *block, const int64_t *rows, Py_ssize_t k, Py_ssize_t d, double *out) {
    if (d == 6)
        for (Py_ssize_t r = 0; r < 6; r++) memcpy(out + rows[6 * k + r], block + 6 * r, 6 * sizeof(double));
    else
        for (Py_ssize_t r = 0; r < 3; r++) memcpy(out + rows[3 * k + r], block + 3 * r, 3 * sizeof(double));
}

/* atb[col + c] += block[r, c] * b[r], rows r in turn. */
#define ADD_TRANSPOSED(D)                                                                      \
    for (Py_ssize_t r = 0; r < D; r++)                                                         \
        for (Py_ssize_t c = 0; c < D; c++) to[c] += block[D * r + c] * b[r];

static void add_transposed(const double *block, const double *b, int64_t col, Py_ssize_t d, double *atb) {
    double *to = atb + col;
    if (d == 6) {
        ADD_TRANSPOSED(6)
    } else {
        ADD_TRANSPOSED(3)
    }
}

/* Checks the destination of each block in (rows, cols): a block with a column >= 0 must have its
   rows' d entries inside out (`n` slots) and its d columns below `ncols`. */
static int blocks_inside(const int64_t *rows, const int64_t *cols, Py_ssize_t count, Py_ssize_t d, Py_ssize_t n,
                         Py_ssize_t ncols, const char *name) {
    for (Py_ssize_t k = 0; k < count; k++) {
        if (cols[k] < 0) continue;
        int bad = cols[k] > ncols - d;
        for (Py_ssize_t r = 0; r < d && !bad; r++) bad = rows[d * k + r] < 0 || rows[d * k + r] > n - d;
        if (bad) {
            PyErr_Format(PyExc_ValueError, "%s: expected each block's slots < len(out) and columns < len(atb)", name);
            return 0;
        }
    }
    return 1;
}

/* between_weighted_jacobians_into(se3, err, scalars, rel, w, rows_i, rows_j, cols_i, cols_j, out,
   werr, atb): the blocks of between_weighted_jacobians written straight to A's CSR values `out`
   instead: edge k's block i has row r at out[rows_i[dof k + r]] onward (dof consecutive slots),
   and first column cols_i[k]; a block whose column is -1 is not A's (a fixed element) and is not
   written. rows_* (E * dof,) and cols_* (E,) int64. With werr (E, dof) non-empty, also adds the
   edges' share of A^T b, b = -werr, to atb (one value per column of A), rows in turn. */
static PyObject *py_between_weighted_jacobians_into(PyObject *self, PyObject *args) {
    int se3;
    Py_buffer b[11];
    if (!PyArg_ParseTuple(args, "py*y*y*y*y*y*y*y*w*y*w*", &se3, &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &b[6],
                          &b[7], &b[8], &b[9], &b[10]))
        return NULL;
    const Group g = se3 ? SE3_GROUP : SE2_GROUP;
    const Py_ssize_t d = g.dof, edges = b[0].len / (d * (Py_ssize_t)sizeof(double));
    const Py_ssize_t n = b[8].len / (Py_ssize_t)sizeof(double), ncols = b[10].len / (Py_ssize_t)sizeof(double);
    const int with_atb = b[9].len > 0;
    const int64_t *ri = (const int64_t *)b[4].buf, *rj = (const int64_t *)b[5].buf;
    const int64_t *ci = (const int64_t *)b[6].buf, *cj = (const int64_t *)b[7].buf;
    int ok = check_len(&b[0], d * edges, "err") && check_len(&b[1], g.scalars * edges, "scalars") &&
             check_len(&b[2], g.element * edges, "rel") && check_len(&b[3], d * d * edges, "w") &&
             check_index_len(&b[4], d * edges, "rows_i") && check_index_len(&b[5], d * edges, "rows_j") &&
             check_index_len(&b[6], edges, "cols_i") && check_index_len(&b[7], edges, "cols_j") &&
             check_len(&b[8], n, "out") && (!with_atb || check_len(&b[9], d * edges, "werr")) &&
             check_len(&b[10], ncols, "atb") &&
             blocks_inside(ri, ci, edges, d, n, with_atb ? ncols : PY_SSIZE_T_MAX, "rows_i, cols_i") &&
             blocks_inside(rj, cj, edges, d, n, with_atb ? ncols : PY_SSIZE_T_MAX, "rows_j, cols_j");
    if (ok) {
        double *scalars[5];
        for (Py_ssize_t s = 0; s < g.scalars; s++) scalars[s] = D(b[1]) + s * edges;
        double *out = D(b[8]), *atb = D(b[10]);
        const double *werr = D(b[9]);
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t k = 0; k < edges; k++) {
            double oi[36], oj[36], rhs[6];
            between_weighted_jacobians_one(se3, D(b[0]) + d * k, scalars, k, D(b[2]) + g.element * k,
                                           D(b[3]) + d * d * k, oi, oj);
            if (ci[k] >= 0) put_block(oi, ri, k, d, out);
            if (cj[k] >= 0) put_block(oj, rj, k, d, out);
            if (!with_atb) continue;
            for (Py_ssize_t r = 0; r < d; r++) rhs[r] = -werr[d * k + r];
            if (ci[k] >= 0) add_transposed(oi, rhs, ci[k], d, atb);
            if (cj[k] >= 0) add_transposed(oj, rhs, cj[k], d, atb);
        }
        Py_END_ALLOW_THREADS
    }
    release(b, 11);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* retract_at(se3, x, free, delta, out): out = x, with out[free[k]] = x[free[k]] Exp(delta[k]);
   x and out (N, element), free (F,) int64 element indices, delta (F, dof). */
static PyObject *py_retract_at(PyObject *self, PyObject *args) {
    int se3;
    Py_buffer b[4];
    if (!PyArg_ParseTuple(args, "py*y*y*w*", &se3, &b[0], &b[1], &b[2], &b[3])) return NULL;
    const Group g = se3 ? SE3_GROUP : SE2_GROUP;
    const Py_ssize_t n = b[0].len / (g.element * (Py_ssize_t)sizeof(double));
    const Py_ssize_t count = b[1].len / (Py_ssize_t)sizeof(int64_t);
    const int64_t *free_index = (const int64_t *)b[1].buf;
    int ok = check_len(&b[0], g.element * n, "x") && check_len(&b[2], g.dof * count, "delta") &&
             check_len(&b[3], g.element * n, "out") &&
             indices_below(free_index, count, n, "free: expected element indices < len(x)");
    if (ok) {
        const double *x = D(b[0]), *d = D(b[2]);
        double *out = D(b[3]);
        Py_BEGIN_ALLOW_THREADS
        memcpy(out, x, (size_t)(g.element * n) * sizeof(double));
        for (Py_ssize_t k = 0; k < count; k++) {
            const Py_ssize_t at = g.element * free_index[k];
            if (se3)
                se3_retract_one(x + at, d + 6 * k, out + at);
            else
                se2_retract_one(x + at, d + 3 * k, out + at);
        }
        Py_END_ALLOW_THREADS
    }
    release(b, 4);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"se3_between_log_parts", py_se3_between_log_parts, METH_VARARGS,
     "se3_between_log_parts(xi, xj, z, err, rel, theta2, sin, cos, alpha, beta)"},
    {"se3_jr_inv", py_se3_jr_inv, METH_VARARGS, "se3_jr_inv(xi, theta2, sin, cos, alpha, beta, out)"},
    {"se3_mul_adjoint_inverse", py_se3_mul_adjoint_inverse, METH_VARARGS,
     "se3_mul_adjoint_inverse(m, rel, k, out)"},
    {"se3_retract", py_se3_retract, METH_VARARGS, "se3_retract(x, delta, out)"},
    {"se2_between_log_parts", py_se2_between_log_parts, METH_VARARGS,
     "se2_between_log_parts(xi, xj, z, err, rel, alpha)"},
    {"se2_jr_inv", py_se2_jr_inv, METH_VARARGS, "se2_jr_inv(xi, alpha, out)"},
    {"se2_mul_adjoint_inverse", py_se2_mul_adjoint_inverse, METH_VARARGS,
     "se2_mul_adjoint_inverse(m, rel, k, out)"},
    {"se2_retract", py_se2_retract, METH_VARARGS, "se2_retract(x, delta, out)"},
    {"retract_at", py_retract_at, METH_VARARGS, "retract_at(se3, x, free, delta, out)"},
    {"between_weighted_error", py_between_weighted_error, METH_VARARGS,
     "between_weighted_error(se3, poses, ends_i, ends_j, z, w, err, rel, scalars, werr)"},
    {"between_weighted_jacobians", py_between_weighted_jacobians, METH_VARARGS,
     "between_weighted_jacobians(se3, err, scalars, rel, w, out_i, out_j)"},
    {"between_weighted_jacobians_into", py_between_weighted_jacobians_into, METH_VARARGS,
     "between_weighted_jacobians_into(se3, err, scalars, rel, w, rows_i, rows_j, cols_i, cols_j, out, werr, atb)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native_geometry",
    "Compiled per-element loops for posegraph.lie.geometry's hot kernels (float64, CPU).", -1, methods,
};

PyMODINIT_FUNC PyInit__native_geometry(void) { return PyModule_Create(&module); }
