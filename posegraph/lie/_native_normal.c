/*
 * Compiled assembly of the normal matrix's values (posegraph.solve.normal.NormalMatrix.values).
 *
 * H = A^T A is the sum of the Gram matrices S_g^T S_g of A's residual blocks g, S_g being the
 * block's d rows and W columns, stored contiguously (row-major) in A's CSR values. The array
 * route gathers every S_g, multiplies them in a batch, gathers the kept entries and scatters
 * them with index_add; here one pass per residual block computes each kept entry
 * (a, b) as sum_r S_g[r, a] S_g[r, b] and adds it at its slot. Float64, CPU; every index is
 * checked against its array's length.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* gram_scatter(a, start, ia, ib, slots, d, W, out):
   out[slots[g, p]] += sum_r a[start[g] + r W + ia[p]] a[start[g] + r W + ib[p]]
   for residual blocks g < len(start) and kept entries p < len(ia). */
static PyObject *py_gram_scatter(PyObject *self, PyObject *args) {
    Py_buffer a, start, ia, ib, slots, out;
    Py_ssize_t d, w;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*nnw*", &a, &start, &ia, &ib, &slots, &d, &w, &out))
        return NULL;
    const Py_ssize_t na = a.len / (Py_ssize_t)sizeof(double);
    const Py_ssize_t nout = out.len / (Py_ssize_t)sizeof(double);
    const Py_ssize_t groups = start.len / (Py_ssize_t)sizeof(int64_t);
    const Py_ssize_t entries = ia.len / (Py_ssize_t)sizeof(int64_t);
    const double *av = (const double *)a.buf;
    const int64_t *st = (const int64_t *)start.buf, *pa = (const int64_t *)ia.buf,
                  *pb = (const int64_t *)ib.buf, *sl = (const int64_t *)slots.buf;
    double *ov = (double *)out.buf;
    const char *problem = NULL;
    if (d < 0 || w < 0)
        problem = "d, W: expected counts >= 0";
    else if (ib.len != ia.len || slots.len != groups * entries * (Py_ssize_t)sizeof(int64_t))
        problem = "ib, slots: expected len(ia) and len(start) * len(ia) entries";
    for (Py_ssize_t p = 0; !problem && p < entries; p++)
        if (pa[p] < 0 || pa[p] >= w || pb[p] < 0 || pb[p] >= w) problem = "ia, ib: expected columns < W";
    for (Py_ssize_t g = 0; !problem && g < groups; g++)
        if (st[g] < 0 || st[g] + d * w > na) problem = "start: expected blocks inside a";
    if (!problem) {
        int bad_slot = 0; /* checked as it goes: out is scratch the caller drops on error */
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t g = 0; g < groups && !bad_slot; g++) {
            const double *s = av + st[g];
            const int64_t *slot = sl + g * entries;
            for (Py_ssize_t p = 0; p < entries; p++) {
                const double *ca = s + pa[p], *cb = s + pb[p];
                double sum = 0.0;
                for (Py_ssize_t r = 0; r < d; r++) sum += ca[r * w] * cb[r * w];
                if ((uint64_t)slot[p] >= (uint64_t)nout) {
                    bad_slot = 1;
                    break;
                }
                ov[slot[p]] += sum;
            }
        }
        Py_END_ALLOW_THREADS
        if (bad_slot) problem = "slots: expected indices inside out";
    }
    PyBuffer_Release(&a);
    PyBuffer_Release(&start);
    PyBuffer_Release(&ia);
    PyBuffer_Release(&ib);
    PyBuffer_Release(&slots);
    PyBuffer_Release(&out);
    if (problem) {
        PyErr_SetString(PyExc_ValueError, problem);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"gram_scatter", py_gram_scatter, METH_VARARGS, "gram_scatter(a, start, ia, ib, slots, d, W, out)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native_normal",
    "Compiled assembly of the normal matrix's values and its product with a vector (float64, CPU).", -1, methods,
};

PyMODINIT_FUNC PyInit__native_normal(void) { return PyModule_Create(&module); }
