defmodule Yggdrasil.Relay do
  @moduledoc false
  # Multi-node delivery of `:elixir` channels.
  #
  # Every node running `:yggdrasil` has one relay, registered locally as
  # `Yggdrasil.Relay` and represented in the `:pg` group `Yggdrasil.Relay`
  # of the scope `Yggdrasil.Registry` by a linked stand-in process (see
  # `init/1`; OTP's own membership: no home-made protocol).
  #
  # Publishing side (`forward/1`, called by `Yggdrasil.Backend.Base.publish/3`
  # after the local delivery): ONE distribution message per remote node that
  # runs a relay, carrying the already-decoded `{:Y_EVENT, channel, message}`
  # tuple. The receiving relay hands it to its own engine. No per-channel
  # filter: see `forward/1`.
  #
  # The list of remote nodes lives in `:persistent_term`, so with no other
  # node the publish path pays one `:persistent_term.get/2`. The relay keeps
  # it current from `:pg.monitor_scope/1` notifications (join/leave) and from
  # `nodedown` messages, and only lists connected nodes, so nothing is sent to
  # a node's relay after its `nodedown` (sends also use `:noconnect`, so a
  # stale read never sets a connection up again).
  #
  # Order: one publisher's events to one relay travel over one ordered
  # process-to-process link, and the relay delivers them one after the other,
  # so per-publisher order holds for every subscriber on every node.
  use GenServer

  alias Yggdrasil.Channel
  alias Yggdrasil.Engine

  @scope Yggdrasil.Registry
  @group __MODULE__
  # An atom key: `:persistent_term.get/2` hashes its key on every publish,
  # and an atom hashes fastest (docs/performance.md).
  @nodes :"Yggdrasil.Relay.nodes"
  @tag :"$yggdrasil_relay"
  @poll_ms 500

  def start_link(_), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @doc false
  # The connected nodes whose relay this node sends `:elixir` events to.
  @spec remote_nodes() :: [node()]
  def remote_nodes, do: :persistent_term.get(@nodes, [])

  @doc false
  # Sends an `:elixir` event to every other node running `:yggdrasil`.
  #
  # Per remote node, not per remote node with subscribers of the channel: a
  # per-channel filter needs every node to announce each channel's
  # first-subscriber/last-subscriber transitions to all the others (N-1
  # distribution messages per transition, subscription churn turning into
  # cluster traffic), and a subscribe on node B would then reach a publisher
  # on node A only after that announcement, so a publish causally after a
  # remote subscribe could miss it. Here a node without subscribers of the
  # channel costs one message and an engine lookup that finds nothing; the
  # original (Phoenix.PubSub PG2 adapter) does the same per-node broadcast.
  @spec forward(tuple()) :: :ok
  def forward(event) do
    case :persistent_term.get(@nodes, []) do
      [] -> :ok
      nodes -> send_all(nodes, {@tag, event})
    end
  end

  defp send_all([], _message), do: :ok

  defp send_all([node | nodes], message) do
    _ = :erlang.send({__MODULE__, node}, message, [:noconnect])
    send_all(nodes, message)
  end

  @doc false
  # `%{relayed: events received from other nodes and delivered here}`.
  @spec stats(node()) :: %{relayed: non_neg_integer()}
  def stats(node \\ node()), do: GenServer.call({__MODULE__, node}, :stats)

  @impl GenServer
  def init(_) do
    # terminate/2 must run on shutdown to stop the forwarding.
    Process.flag(:trap_exit, true)
    :ok = :net_kernel.monitor_nodes(true)
    ref = monitor_scope()
    member = spawn_link(fn -> Process.sleep(:infinity) end)
    :ok = :pg.join(@scope, @group, member)
    state = %{monitor: ref, member: member, relayed: 0}
    refresh()
    {:ok, state}
  end

  # The group member is a linked stand-in, not the relay itself: on OTP
  # 25.1-25.2 a process that both monitors a scope and is a member of it
  # crashes the scope when it exits (a `CaseClauseError` in `pg`), which
  # would drop every adapter this node announced there, at every shutdown.
  # The stand-in dies with the relay (link), so membership still means "this
  # node runs a relay".
  #
  # `:pg.monitor_scope/1` exists from OTP 25.1; on 25.0 the list is
  # refreshed periodically (and on nodeup/nodedown) instead.
  defp monitor_scope do
    if Code.ensure_loaded?(:pg) and function_exported?(:pg, :monitor_scope, 1) do
      {ref, _groups} = apply(:pg, :monitor_scope, [@scope])
      ref
    else
      {:ok, _} = :timer.send_interval(@poll_ms, :refresh)
      nil
    end
  end

  @impl GenServer
  def handle_info({@tag, {:Y_EVENT, %Channel{} = channel, _message} = event}, state) do
    Engine.broadcast(Channel.key(channel), event)
    {:noreply, %{state | relayed: state.relayed + 1}}
  end

  def handle_info({ref, action, @group, _pids}, %{monitor: ref} = state)
      when action in [:join, :leave] do
    refresh()
    {:noreply, state}
  end

  def handle_info({event, _node}, state) when event in [:nodedown, :nodeup] do
    refresh()
    {:noreply, state}
  end

  def handle_info(:refresh, state) do
    refresh()
    {:noreply, state}
  end

  def handle_info({:EXIT, member, reason}, %{member: member} = state),
    do: {:stop, {:group_member_exited, reason}, state}

  def handle_info(_other, state), do: {:noreply, state}

  @impl GenServer
  def handle_call(:stats, _from, state), do: {:reply, %{relayed: state.relayed}, state}

  @impl GenServer
  def terminate(_reason, state) do
    put_nodes([])
    # Also on a :normal exit, which the link does not pass on.
    Process.exit(state.member, :kill)
  end

  # Remote relays, only on nodes connected right now: `:pg` may still list a
  # node's members for a moment after its `nodedown`.
  defp refresh do
    connected = Node.list()

    @scope
    |> :pg.get_members(@group)
    |> Enum.map(&node/1)
    |> Enum.filter(&(&1 in connected))
    |> Enum.uniq()
    |> Enum.sort()
    |> put_nodes()
  end

  # Writing a persistent term costs a global scan; only when it changed.
  defp put_nodes(nodes) do
    if :persistent_term.get(@nodes, nil) != nodes, do: :persistent_term.put(@nodes, nodes)
    :ok
  end
end
