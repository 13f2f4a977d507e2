defmodule Yggdrasil.UseCompatTest do
  # Yggdrasil 6 modules are written with and without @impl; `use` must not
  # inject @impl itself, or a module without it gets compile warnings (which
  # break builds run with --warnings-as-errors).
  use ExUnit.Case, async: true

  test "use Yggdrasil, Yggdrasil.Backend and Yggdrasil.Transformer modules compile without warnings" do
    suffix = "Compat#{System.unique_integer([:positive])}"

    source = """
    defmodule #{suffix}.Backend do
      use Yggdrasil.Backend, name: :#{Macro.underscore(suffix)}_backend

      def publish(channel, message, metadata), do: super(channel, message, metadata)
    end

    defmodule #{suffix}.Transformer do
      use Yggdrasil.Transformer, name: :#{Macro.underscore(suffix)}_transformer

      def encode(_channel, message), do: {:ok, message}
    end

    defmodule #{suffix}.Subscriber do
      use Yggdrasil

      def handle_event(_channel, _message, state), do: {:ok, state}
    end

    defmodule #{suffix}.AnnotatedSubscriber do
      use Yggdrasil

      @impl true
      def handle_event(_channel, _message, state), do: {:ok, state}

      @impl true
      def handle_connect(_channel, state), do: {:ok, state}
    end
    """

    warnings =
      ExUnit.CaptureIO.capture_io(:stderr, fn ->
        assert [_, _, _, _] = Code.compile_string(source)
      end)

    assert warnings == ""
  end
end
