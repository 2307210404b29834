COMMENT
NMDA receptor synapse of the neuron-tcn project: a difference of two exponentials (rise tau1, decay tau2, scaled so
that one event of weight w peaks at w uS before the block) times the Mg2+ block of Jahr & Stevens (1990),
B(v) = 1 / (1 + mg / 3.57 mM * exp(-0.062 v / mV)). Used by the NEURON backend of the ground-truth check.
ENDCOMMENT

NEURON {
    POINT_PROCESS NmdaMgSyn
    RANGE tau1, tau2, e, mg, i, g
    NONSPECIFIC_CURRENT i
}
UNITS {
    (nA) = (nanoamp)
    (mV) = (millivolt)
    (uS) = (microsiemens)
    (mM) = (milli/liter)
}
PARAMETER {
    tau1 = 2 (ms) <1e-9,1e9>
    tau2 = 70 (ms) <1e-9,1e9>
    e = 0 (mV)
    mg = 1 (mM)
}
ASSIGNED {
    v (mV)
    i (nA)
    g (uS)
    factor
}
STATE {
    A (uS)
    B (uS)
}
INITIAL {
    LOCAL tp
    if (tau1/tau2 > 0.9999) {
        tau1 = 0.9999*tau2
    }
    A = 0
    B = 0
    tp = (tau1*tau2)/(tau2 - tau1) * log(tau2/tau1)
    factor = -exp(-tp/tau1) + exp(-tp/tau2)
    factor = 1/factor
}
BREAKPOINT {
    SOLVE state METHOD cnexp
    g = (B - A) * mgblock(v)
    i = g*(v - e)
}
DERIVATIVE state {
    A' = -A/tau1
    B' = -B/tau2
}
FUNCTION mgblock(v (mV)) {
    mgblock = 1 / (1 + exp(0.062 (/mV) * -v) * (mg / 3.57 (mM)))
}
NET_RECEIVE(weight (uS)) {
    A = A + weight*factor
    B = B + weight*factor
}
