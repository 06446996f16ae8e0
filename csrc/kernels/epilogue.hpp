// The fused epilogue shared by int8 GEMM and int8 sparse kernels (CONTRACT section 2), scalar form.
// Per output element:  y = float32(acc) * scale + bias;  y = act(y);  then store float32, or requantize with
// the rule of section 1 (one float32 division by the output scale, as ONNX QuantizeLinear). `scale` is the caller's precomputed float32 product sa * sw[n].
// The SAME float32 operation sequence runs on every path: separate multiply and add (no FMA contraction:
// the build uses -ffp-contract=off), and one rational tanh written identically in scalar and SIMD (sigmoid is
// 0.5 + 0.5 * tanh(0.5 * y), both templates over the vector type). The SIMD forms of the rest live in
// epilogue_avx2.hpp / epilogue_avx512.hpp and mirror this file operation for operation; tests compare them
// bit for bit.
#pragma once
#include <initializer_list>
#include <type_traits>

#include "common.hpp"

namespace pyquant {

enum class Activation : int { Identity = 0, Relu = 1, LeakyRelu = 2, Tanh = 3, Sigmoid = 4 };

struct Epilogue {
    Activation act = Activation::Identity;
    float alpha = 0.0f;          // LeakyReLU slope for y < 0
    bool requantize = false;     // false: float32 output; true: int8/uint8 output
    float out_scale = 1.0f;      // requantize: y is divided by it (> 0)
    int32_t out_zp = 0;
    int32_t qmin = -128, qmax = 127;
};

// Unnamed namespace: ISA files include this too, and an external-linkage inline copy compiled with AVX
// flags must never be the one the linker keeps for baseline code.
namespace {

// tanh as a rational function of x on [-c, c] (odd polynomial of degree 13 over even of degree 6; the
// well-known single-precision minimax fit), saturating outside. Max abs error 4e-7 (checked on a dense grid).
namespace tanh_coef {
constexpr float clamp = 7.90531110763549805f;
constexpr float a1 = 4.89352455891786e-03f, a3 = 6.37261928875436e-04f, a5 = 1.48572235717979e-05f,
                a7 = 5.12229709037114e-08f, a9 = -8.60467152213735e-11f, a11 = 2.00018790482477e-13f,
                a13 = -2.76076847742355e-16f;
constexpr float b0 = 4.89352518554385e-03f, b2 = 2.26843463243900e-03f, b4 = 1.18534705686654e-04f,
                b6 = 1.19825839466702e-06f;
}  // namespace tanh_coef

// The rational tanh and the sigmoid built on it, written once over an operation set V (V::T the value type;
// set1, add, mul, div, min, max): the scalar path instantiates it with ScalarOps below, the SIMD headers with
// their vector types, so every path runs the same float32 operation sequence by construction.
template <class V>
inline typename V::T tanh_rational_v(typename V::T x) {
    using namespace tanh_coef;
    x = V::max(x, V::set1(-clamp));
    x = V::min(x, V::set1(clamp));
    const typename V::T x2 = V::mul(x, x);
    typename V::T p = V::set1(a13);
    for (float a : {a11, a9, a7, a5, a3, a1}) p = V::add(V::mul(p, x2), V::set1(a));
    p = V::mul(p, x);
    typename V::T q = V::set1(b6);
    for (float b : {b4, b2, b0}) q = V::add(V::mul(q, x2), V::set1(b));
    return V::div(p, q);
}

template <class V>
inline typename V::T sigmoid_v(typename V::T y) {  // 0.5 + 0.5 * tanh(0.5 * y)
    const typename V::T half = V::set1(0.5f);
    return V::add(half, V::mul(half, tanh_rational_v<V>(V::mul(half, y))));
}

struct ScalarOps {
    using T = float;
    static float set1(float v) { return v; }
    static float add(float a, float b) { return a + b; }
    static float mul(float a, float b) { return a * b; }
    static float div(float a, float b) { return a / b; }
    static float min(float a, float b) { return a > b ? b : a; }
    static float max(float a, float b) { return a < b ? b : a; }
};

inline float tanh_rational(float x) { return tanh_rational_v<ScalarOps>(x); }

inline float activate(float y, Activation act, float alpha) {
    switch (act) {
        case Activation::Identity: return y;
        case Activation::Relu: return y > 0.0f ? y : 0.0f;
        case Activation::LeakyRelu: return y < 0.0f ? y * alpha : y;
        case Activation::Tanh: return tanh_rational(y);
        case Activation::Sigmoid: return sigmoid_v<ScalarOps>(y);
    }
    return y;
}

// Calls f(std::integral_constant<Activation, A>{}) for the run-time activation: kernels compile one loop per
// activation without writing this switch again.
template <class F>
inline void with_activation(Activation act, F&& f) {
    switch (act) {
        case Activation::Relu: return f(std::integral_constant<Activation, Activation::Relu>{});
        case Activation::LeakyRelu: return f(std::integral_constant<Activation, Activation::LeakyRelu>{});
        case Activation::Tanh: return f(std::integral_constant<Activation, Activation::Tanh>{});
        case Activation::Sigmoid: return f(std::integral_constant<Activation, Activation::Sigmoid>{});
        case Activation::Identity: break;
    }
    f(std::integral_constant<Activation, Activation::Identity>{});
}

// Calls f(activation constant, std::bool_constant<Q>) with Q = requantize: one kernel instance per
// activation and output kind.
template <class F>
inline void with_epilogue(Activation act, bool requantize, F&& f) {
    with_activation(act, [&](auto a) {
        if (requantize)
            f(a, std::true_type{});
        else
            f(a, std::false_type{});
    });
}

inline float epilogue_float(int32_t acc, float scale, float bias, const Epilogue& e) {
    float y = static_cast<float>(acc) * scale + bias;
    return activate(y, e.act, e.alpha);
}

// Requantize a finite float with the section-1 rule (one float32 division by the scale, clamp in float,
// round half to even, add zero point).
inline int32_t requantize_one(float y, const Epilogue& e) {
    float v = y / e.out_scale;
    float lo = static_cast<float>(e.qmin - e.out_zp), hi = static_cast<float>(e.qmax - e.out_zp);
    v = v < lo ? lo : v;
    v = v > hi ? hi : v;
    const float magic = 12582912.0f;  // 1.5 * 2^23: (v + magic) - magic rounds half to even for |v| < 2^22
    return static_cast<int32_t>((v + magic) - magic) + e.out_zp;
}

}  // namespace
}  // namespace pyquant
