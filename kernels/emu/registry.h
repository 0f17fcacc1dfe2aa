// The emulator's kernel registry: each kernel, compiled as host C++, registers an invoker
// that unpacks cuLaunchKernel's parameter array into the kernel's typed arguments.
#pragma once

#include <functional>
#include <string>
#include <type_traits>
#include <utility>

namespace emu {

using Invoker = std::function<void(void**)>;

struct Registrar {
    Registrar(const char* name, Invoker invoker);
};

template <typename... A, std::size_t... I>
void invoke(void (*kernel)(A...), void** params, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(params[I])...);
}

// An invoker for `kernel`: params[i] points at argument i, as cuLaunchKernel passes them.
template <typename... A>
Invoker invoker(void (*kernel)(A...)) {
    return [kernel](void** params) { invoke(kernel, params, std::index_sequence_for<A...>{}); };
}

}  // namespace emu
